"""Folders holding each family's *published* file set, written by hand as the hub ships it.

``save_pretrained`` writes files the published checkpoints do not have (transformers 5 puts
every sub-processor into ``processor_config.json`` and always writes a video processor), so
tests built only from it cannot see what a new user sees. Each builder here writes the
files of one hub repository as published — ``config.json``, ``preprocessor_config.json``,
``video_preprocessor_config.json`` where the repository has one, ``processor_config.json``,
``chat_template.json``, ``tokenizer_config.json`` and ``tokenizer.json`` — with the
compute shrunk (2 decoder layers, hidden 32, 2-layer vision tower) but the real image
sizes, patch sizes, pixel limits, vocabulary size and special-token ids. The tokenizer is a
small one trained here that carries the real special tokens at their real ids. Only the
weights (random) are written by transformers, as ``model.safetensors``.

Repositories mirrored: llava-hf/LLaVA-NeXT-Video-7B-hf, Qwen/Qwen2-VL-7B-Instruct,
Qwen/Qwen2.5-VL-7B-Instruct, OpenGVLab/InternVL3-1B-hf (with its own 448 px video config,
and with the 384 px one that transformers writes from the class default), and
LanguageBind/Video-LLaVA-7B-hf.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tiny import build_tokenizer
from tiny_families import qwen_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

LLAVA_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
QWEN_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}

LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = "
    "video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] "
    "is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}{% endif %}"
)
VIDEO_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'video') %}{{ '<video>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# the shrunk compute shared by every fixture: what the tests can afford on two CPU cores
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}


def _write(path: Path, name: str, data: Any) -> None:
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    (path / name).write_text(text)


def _respecial(fast: Any, specials: dict[str, int]) -> dict[str, Any]:
    """``tokenizer.json`` of ``fast`` with ``specials`` moved to their real ids: into the model
    vocabulary (gaps are fine) and listed as added special tokens, as a hub tokenizer has them."""
    data = json.loads(fast.backend_tokenizer.to_str())
    vocab = {
        t: i for t, i in data["model"]["vocab"].items() if t not in specials and i not in specials.values()
    }
    vocab.update(specials)
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in sorted(specials.items(), key=lambda x: x[1])
    ]
    return data


def _weights(path: Path, model_class: str, seed: int) -> None:
    """Random weights for the hand-written ``config.json`` (only ``model.safetensors`` is kept)."""
    import transformers

    cls = getattr(transformers, model_class)
    config = transformers.AutoConfig.from_pretrained(path)
    torch.manual_seed(seed)
    model = cls._from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # random heads give near-uniform answers; make cuts visible
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for f in Path(tmp).glob("*.safetensors"):
            shutil.move(str(f), path / f.name)


# ---------------------------------------------------------------------------- LLaVA-NeXT-Video
def llava_next_video(path: Path, seed: int = 0) -> Path:
    """llava-hf/LLaVA-NeXT-Video-7B-hf: no video processor config; ``preprocessor_config.json``
    holds LlavaNextImageProcessor settings and names ``LlavaNextVideoProcessor``."""
    path.mkdir(parents=True, exist_ok=True)
    specials = {**LLAVA_SPECIALS, "<video>": 32000, "<image>": 32001}
    _write(path, "tokenizer.json", _respecial(build_tokenizer(), specials))
    _write(
        path,
        "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "clean_up_tokenization_spaces": False,
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "padding_side": "left",
            "processor_class": "LlavaNextVideoProcessor",
            "tokenizer_class": "LlamaTokenizer",
            "use_default_system_prompt": False,
        },
    )
    _write(path, "chat_template.json", {"chat_template": LLAVA_NEXT_VIDEO_TEMPLATE})
    _write(
        path,
        "preprocessor_config.json",
        {
            "aspect_ratio_setting": "anyres",
            "crop_size": {"height": 336, "width": 336},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "image_mean": CLIP_MEAN,
            "image_processor_type": "LlavaNextImageProcessor",
            "image_std": CLIP_STD,
            "processor_class": "LlavaNextVideoProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 336},
        },
    )
    _write(
        path,
        "processor_config.json",
        {
            "patch_size": 14,
            "processor_class": "LlavaNextVideoProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    _write(
        path,
        "config.json",
        {
            "architectures": ["LlavaNextVideoForConditionalGeneration"],
            "ignore_index": -100,
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "image_token_index": 32001,
            "model_type": "llava_next_video",
            "projector_hidden_act": "gelu",
            "spatial_pool_mode": "average",
            "spatial_pool_stride": 2,
            "text_config": {
                "_name_or_path": "lmsys/vicuna-7b-v1.5",
                "architectures": ["LlamaForCausalLM"],
                "max_position_embeddings": 4096,
                "model_type": "llama",
                "pad_token_id": 0,
                "rms_norm_eps": 1e-05,
                "torch_dtype": "float16",
                "vocab_size": 32064,
                **TINY_LLAMA,
            },
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.42.0.dev0",
            "use_image_newline_parameter": True,
            "video_token_index": 32000,
            "vision_config": {
                "image_size": 336,
                "model_type": "clip_vision_model",
                "patch_size": 14,
                "projection_dim": 768,
                "vocab_size": 32000,
                **TINY_CLIP,
            },
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "vocab_size": 32064,
        },
    )
    _weights(path, "LlavaNextVideoForConditionalGeneration", seed)
    return path


# ---------------------------------------------------------------------------- Video-LLaVA
def video_llava(path: Path, seed: int = 0) -> Path:
    """LanguageBind/Video-LLaVA-7B-hf: no video processor config; 224 px CLIP, 4096 context."""
    path.mkdir(parents=True, exist_ok=True)
    specials = {**LLAVA_SPECIALS, "<image>": 32000, "<video>": 32001, "<pad>": 32002}
    _write(path, "tokenizer.json", _respecial(build_tokenizer(), specials))
    _write(
        path,
        "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "clean_up_tokenization_spaces": False,
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "padding_side": "left",
            "processor_class": "VideoLlavaProcessor",
            "tokenizer_class": "LlamaTokenizer",
        },
    )
    _write(path, "chat_template.json", {"chat_template": VIDEO_LLAVA_TEMPLATE})
    _write(
        path,
        "preprocessor_config.json",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": CLIP_MEAN,
            "image_processor_type": "VideoLlavaImageProcessor",
            "image_std": CLIP_STD,
            "processor_class": "VideoLlavaProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 224},
        },
    )
    _write(
        path,
        "processor_config.json",
        {
            "num_additional_image_tokens": 1,
            "patch_size": 14,
            "processor_class": "VideoLlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    _write(
        path,
        "config.json",
        {
            "architectures": ["VideoLlavaForConditionalGeneration"],
            "ignore_index": -100,
            "image_token_index": 32000,
            "model_type": "video_llava",
            "pad_token_id": 32002,
            "projector_hidden_act": "gelu",
            "text_config": {
                "_name_or_path": "lmsys/vicuna-7b-v1.5",
                "architectures": ["LlamaForCausalLM"],
                "max_position_embeddings": 4096,
                "model_type": "llama",
                "pad_token_id": 0,
                "rms_norm_eps": 1e-05,
                "torch_dtype": "float16",
                "vocab_size": 32064,
                **TINY_LLAMA,
            },
            "torch_dtype": "float16",
            "transformers_version": "4.41.0.dev0",
            "video_token_index": 32001,
            "vision_config": {
                "image_size": 224,
                "model_type": "clip_vision_model",
                "patch_size": 14,
                "projection_dim": 768,
                "vocab_size": 32000,
                **TINY_CLIP,
            },
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "vocab_size": 32064,
        },
    )
    _weights(path, "VideoLlavaForConditionalGeneration", seed)
    return path


# ---------------------------------------------------------------------------- Qwen2-VL / 2.5-VL
def _qwen_tokenizer_files(path: Path, processor_class: str, extra: dict[str, int] | None = None) -> None:
    specials = {**QWEN_SPECIALS, **(extra or {})}
    _write(path, "tokenizer.json", _respecial(qwen_tokenizer([]), specials))
    _write(
        path,
        "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 32768,
            "pad_token": "<|endoftext|>",
            "processor_class": processor_class,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )


def _qwen_preprocessor(processor_class: str) -> dict[str, Any]:
    return {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": processor_class,
    }


def _qwen_text(max_positions: int) -> dict[str, Any]:
    return {
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": max_positions,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        # head_dim 16: the sections must sum to head_dim / 2 (16, 24, 24 at the real 128)
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": 152064,
        **TINY_LLAMA,
    }


def qwen2_vl(path: Path, seed: int = 0) -> Path:
    """Qwen/Qwen2-VL-7B-Instruct: image processor settings only (max_pixels 12845056)."""
    path.mkdir(parents=True, exist_ok=True)
    _qwen_tokenizer_files(path, "Qwen2VLProcessor")
    _write(path, "chat_template.json", {"chat_template": QWEN2_VL_TEMPLATE})
    _write(path, "preprocessor_config.json", _qwen_preprocessor("Qwen2VLProcessor"))
    _write(
        path,
        "config.json",
        {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            **_qwen_text(32768),
            "vision_config": {
                "depth": 2,
                "embed_dim": 32,
                "mlp_ratio": 2,
                "num_heads": 2,
                "in_chans": 3,
                "hidden_size": 32,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "temporal_patch_size": 2,
            },
        },
    )
    _weights(path, "Qwen2VLForConditionalGeneration", seed)
    return path


def qwen2_5_vl(path: Path, seed: int = 0) -> Path:
    """Qwen/Qwen2.5-VL-7B-Instruct: image processor settings only, 128000-token context."""
    path.mkdir(parents=True, exist_ok=True)
    _qwen_tokenizer_files(path, "Qwen2_5_VLProcessor")
    _write(path, "chat_template.json", {"chat_template": QWEN2_VL_TEMPLATE})
    _write(path, "preprocessor_config.json", _qwen_preprocessor("Qwen2_5_VLProcessor"))
    _write(
        path,
        "config.json",
        {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **_qwen_text(128000),
            "vision_config": {
                "depth": 2,
                "hidden_act": "silu",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "in_chans": 3,
                "out_hidden_size": 32,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "window_size": 112,
                "fullatt_block_indexes": [1],
                "tokens_per_second": 2,
                "temporal_patch_size": 2,
            },
        },
    )
    _weights(path, "Qwen2_5_VLForConditionalGeneration", seed)
    return path


# ---------------------------------------------------------------------------- InternVL3 -hf
INTERNVL_SPECIALS = {
    "<img>": 151665,
    "</img>": 151666,
    "<IMG_CONTEXT>": 151667,
    "<quad>": 151668,
    "</quad>": 151669,
    "<ref>": 151670,
    "</ref>": 151671,
    "<box>": 151672,
    "</box>": 151673,
}


def internvl(path: Path, seed: int = 0, video_size: int | None = 448) -> Path:
    """OpenGVLab/InternVL3-1B-hf. ``video_size``: the ``video_preprocessor_config.json`` frame
    size (448 as the repository ships it; 384 as transformers writes it from the class
    default, seen in derived checkpoints; None: no video config at all)."""
    path.mkdir(parents=True, exist_ok=True)
    specials = {
        **{t: i for t, i in QWEN_SPECIALS.items() if t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    }
    specials.update(INTERNVL_SPECIALS)
    specials["<video>"] = 151674
    _write(path, "tokenizer.json", _respecial(qwen_tokenizer([]), specials))
    _write(
        path,
        "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "context_image_token": "<IMG_CONTEXT>",
            "end_image_token": "</img>",
            "eos_token": "<|im_end|>",
            "extra_special_tokens": {
                "context_image_token": "<IMG_CONTEXT>",
                "end_image_token": "</img>",
                "start_image_token": "<img>",
                "video_token": "<video>",
            },
            "model_max_length": 8192,
            "pad_token": "<|endoftext|>",
            "processor_class": "InternVLProcessor",
            "split_special_tokens": False,
            "start_image_token": "<img>",
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
            "video_token": "<video>",
        },
    )
    _write(path, "chat_template.json", {"chat_template": INTERNVL_TEMPLATE})
    norm = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    _write(
        path,
        "preprocessor_config.json",
        {
            "crop_size": None,
            "crop_to_patches": False,
            "data_format": "channels_first",
            "default_to_square": True,
            "device": None,
            "do_center_crop": None,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            **norm,
            "image_processor_type": "GotOcr2ImageProcessorFast",
            "input_data_format": None,
            "max_patches": 12,
            "min_patches": 1,
            "processor_class": "InternVLProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "return_tensors": None,
            "size": {"height": 448, "width": 448},
        },
    )
    _write(path, "processor_config.json", {"image_seq_length": 256, "processor_class": "InternVLProcessor"})
    if video_size is not None:
        _write(
            path,
            "video_preprocessor_config.json",
            {
                "crop_size": None,
                "data_format": "channels_first",
                "default_to_square": True,
                "device": None,
                "do_center_crop": None,
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "do_sample_frames": False,
                "fps": None,
                **norm,
                "input_data_format": None,
                "num_frames": None,
                "processor_class": "InternVLProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "size": {"height": video_size, "width": video_size},
                "size_divisor": None,
                "video_metadata": None,
                "video_processor_type": "InternVLVideoProcessor",
            },
        )
    _write(
        path,
        "config.json",
        {
            "architectures": ["InternVLForConditionalGeneration"],
            "downsample_ratio": 0.5,
            "image_seq_length": 256,
            "image_token_id": 151667,
            "model_type": "internvl",
            "projector_hidden_act": "gelu",
            "text_config": {
                "architectures": ["Qwen2ForCausalLM"],
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_act": "silu",
                "max_position_embeddings": 32768,
                "max_window_layers": 70,
                "model_type": "qwen2",
                "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0,
                "sliding_window": None,
                "tie_word_embeddings": False,
                "torch_dtype": "bfloat16",
                "use_cache": True,
                "use_sliding_window": False,
                "vocab_size": 151674,
                **TINY_LLAMA,
            },
            "torch_dtype": "bfloat16",
            "transformers_version": "4.52.0.dev0",
            "vision_config": {
                "architectures": ["InternVisionModel"],
                "attention_bias": True,
                "attention_dropout": 0.0,
                "dropout": 0.0,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0,
                "image_size": [448, 448],
                "initializer_factor": 0.1,
                "initializer_range": 1e-10,
                "layer_norm_eps": 1e-06,
                "layer_scale_init_value": 0.1,
                "model_type": "internvl_vision",
                "norm_type": "layer_norm",
                "patch_size": [14, 14],
                "projection_dropout": 0.0,
                "torch_dtype": "bfloat16",
                "use_absolute_position_embeddings": True,
                "use_mask_token": False,
                "use_mean_pooling": True,
                "use_qk_norm": False,
                **TINY_CLIP,
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        },
    )
    _weights(path, "InternVLForConditionalGeneration", seed)
    return path


BUILDERS = {
    "llava_next_video": llava_next_video,
    "video_llava": video_llava,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "internvl": internvl,
    "internvl_384": lambda p, seed=0: internvl(p, seed, video_size=384),
}
