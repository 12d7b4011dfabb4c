"""Mini-InternVL-4B-Video-FT (original InternVL-Chat layout on transformers components):
conformance, the original key layout, the features against a hand-written InternViT /
pixel-shuffle / mlp1 reference, the phi3 prompt, dispatch and drift guards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.fixtures.pllava import build_mini_internvl, internvl_key, one_thread  # noqa: F401
from tests.fixtures.tiny import make_sample
from vlmflow.models import claimed_by, load_model
from vlmflow.models.mini_internvl import MiniInternVLAdapter, is_mini_internvl_config
from vlmflow.sample import Sample

FAMILY = "mini_internvl"


def test_paper_phi3_prompt(adapter) -> None:
    sample = make_sample()
    prepared = adapter.prepare(sample)
    assert prepared.prompt.startswith(
        adapter.system_prompt + " <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\nQuestion:"
    )
    assert prepared.prompt.endswith(
        "(D) Took the box. \nOnly give the best option. <|assistant|>\nBest option:("
    )
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert text("true_option") == "(C) Put down the cup." and text("last") == "("
    video = prepared.layout.resolve("video")
    assert len(video) == 4 * 4 and ids[video[0] - 1] == adapter.tokenizer.convert_tokens_to_ids("<img>")
    assert ids[video[-1] + 1] == adapter.tokenizer.convert_tokens_to_ids("</img>")


SYSTEM_OPEN = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
    "movement of objects, and the action and pose of persons. Based on your observations, answer the "
    "question concisely.\n"
)


@pytest.mark.parametrize("meta", [{}, {"question_template": "Question: {q}\n", "answer_prompt": "\nIt is"}])
def test_paper_phi3_open_ended_prompt(adapter, meta) -> None:
    """The paper's eval_mvbench_open_ended_phi3 conversation: the MVBench open-ended system
    prompt, the video as its own <|user|> turn, the question (through the sample's question
    template) and the assistant turn with the sample's answer prompt; the groups decode."""
    frames = make_sample().frames
    sample = Sample(id="o", question="What does the person do after eating?", frames=frames, meta=meta)
    prepared = adapter.prepare(sample)
    user = meta.get("question_template", "{q}").format(q=sample.question)
    assert prepared.prompt == (
        SYSTEM_OPEN
        + " <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\n"
        + user
        + " <|assistant|>\n"
        + meta.get("answer_prompt", "")
    )
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    system = [ids[i] for i in prepared.layout.resolve("system")]  # with the BOS token
    assert adapter.tokenizer.decode(system, skip_special_tokens=True).strip() == SYSTEM_OPEN.strip()
    assert text("question_no_options").strip() == sample.question
    assert text("question").strip() == user.strip()
    video = prepared.layout.resolve("video")
    assert len(video) == 4 * 4 and ids[video[0] - 1] == adapter.tokenizer.convert_tokens_to_ids("<img>")
    assert ids[video[-1] + 1] == adapter.tokenizer.convert_tokens_to_ids("</img>")
    assistant = ids.index(adapter.tokenizer.convert_tokens_to_ids("<|assistant|>"))
    assert assistant > prepared.layout.question.end - 1 and prepared.layout.last == len(ids) - 1


def test_checkpoint_in_original_layout_loads_every_weight(path: Path, adapter) -> None:
    from safetensors.torch import load_file

    from vlmflow.models.mini_internvl import hf_config, load_mini_internvl

    stored = load_file(str(path / "model.safetensors"))
    assert any(k.endswith("attn.qkv.weight") for k in stored) and "mlp1.1.weight" in stored
    raw = json.loads((path / "config.json").read_text())
    model, info = load_mini_internvl(str(path), hf_config(raw, adapter.processor.image_token_id))
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    seen = set()
    for name, value in model.state_dict().items():
        m = re.match(r"^(.*\.attention)\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            key = internvl_key(f"{m[1]}.qkv.{m[3]}")
            want = stored[key].chunk(3)["qkv".index(m[2])]
        else:
            key = internvl_key(name)
            want = stored[key]
        seen.add(key)
        assert torch.equal(value, want), name
    assert seen == set(stored)


def _reference_features(stored: dict, raw: dict, pixels: torch.Tensor) -> torch.Tensor:
    """InternVL-Chat's extract_feature re-stated on the original weights: InternViT (fused
    qkv, layer scale, LayerNorm), drop CLS, pixel shuffle (v1 / v2), mlp1."""
    v = raw["vision_config"]
    d, heads, eps = v["hidden_size"], v["num_attention_heads"], v["layer_norm_eps"]
    w = lambda k: stored[k]  # noqa: E731
    x = F.conv2d(pixels, w("vision_model.embeddings.patch_embedding.weight"),
                 w("vision_model.embeddings.patch_embedding.bias"), stride=v["patch_size"])  # fmt: skip
    x = x.flatten(2).transpose(1, 2)
    t, n = x.shape[0], x.shape[1] + 1
    x = torch.cat([w("vision_model.embeddings.class_embedding").expand(t, 1, d), x], 1)
    x = x + w("vision_model.embeddings.position_embedding")
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = F.layer_norm(x, (d,), w(p + "norm1.weight"), w(p + "norm1.bias"), eps)
        qkv = F.linear(h, w(p + "attn.qkv.weight"), w(p + "attn.qkv.bias"))
        q, k, val = qkv.reshape(t, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ val
        att = F.linear(
            att.transpose(1, 2).reshape(t, n, d), w(p + "attn.proj.weight"), w(p + "attn.proj.bias")
        )
        x = x + att * w(p + "ls1")
        h = F.layer_norm(x, (d,), w(p + "norm2.weight"), w(p + "norm2.bias"), eps)
        mlp = F.linear(
            F.gelu(F.linear(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))), w(p + "mlp.fc2.weight")
        )
        x = x + (mlp + w(p + "mlp.fc2.bias")) * w(p + "ls2")
    g = int((n - 1) ** 0.5)
    x = x[:, 1:].reshape(t, g, g, d)
    x = x.view(t, g, g // 2, d * 2).permute(0, 2, 1, 3).contiguous().view(t, g // 2, g // 2, d * 4)
    if raw["ps_version"] == "v2":
        x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(t, -1, d * 4)
    x = F.layer_norm(x, (d * 4,), w("mlp1.0.weight"), w("mlp1.0.bias"), 1e-5)
    return F.linear(
        F.gelu(F.linear(x, w("mlp1.1.weight"), w("mlp1.1.bias"))), w("mlp1.3.weight"), w("mlp1.3.bias")
    )


@pytest.mark.parametrize("ps_version", ["v2", "v1"])
@torch.inference_mode()
def test_features_match_the_original_computation(ps_version: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = build_mini_internvl(tmp_path / ps_version, layers=1, ps_version=ps_version)
    adapter = load_model(str(path))
    raw = json.loads((path / "config.json").read_text())
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = adapter.model.model.get_image_features(pixel_values=pixels).pooler_output
    want = _reference_features(load_file(str(path / "model.safetensors")), raw, pixels)
    assert got.shape == want.shape == (3, 4, 64)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_dispatch_claims_internvl_chat_with_phi3_only(path: Path) -> None:
    assert claimed_by(str(path)) is MiniInternVLAdapter
    internlm = {"model_type": "internvl_chat", "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}
    assert not is_mini_internvl_config(internlm)  # InternLM2 is remote code: not buildable here
    assert is_mini_internvl_config({"model_type": "internvl_chat", "llm_config": {"model_type": "phi3"}})


def test_drift_guard_transformers_paths(adapter) -> None:
    """The transformers names the Mini-InternVL adapter relies on; a rename fails here."""
    from transformers import InternVLForConditionalGeneration, InternVLVisionConfig, Phi3Config
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping  # noqa: F401
    from transformers.core_model_loading import Chunk, WeightConverter, WeightRenaming  # noqa: F401
    from transformers.models.internvl.modeling_internvl import (
        InternVLMultiModalProjector,
        InternVLVisionModel,
    )
    from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer

    model = adapter.model
    assert isinstance(model, InternVLForConditionalGeneration)
    assert isinstance(model.model.vision_tower, InternVLVisionModel)
    assert isinstance(model.model.multi_modal_projector, InternVLMultiModalProjector)
    assert isinstance(model.model.vision_tower.layernorm, torch.nn.Identity)  # no norm after the last layer
    assert all(isinstance(x, Phi3DecoderLayer) for x in model.model.language_model.layers)
    fields = ("norm_type", "attention_bias", "use_qk_norm", "layer_scale_init_value",
              "use_absolute_position_embeddings", "use_mean_pooling")  # fmt: skip
    assert all(hasattr(InternVLVisionConfig(), f) for f in fields)
    assert callable(model.model.pixel_shuffle)
    layer = model.model.vision_tower.encoder.layer[0]
    for name in ("lambda_1", "lambda_2", "layernorm_before", "layernorm_after"):
        assert hasattr(layer, name), name
    for name in ("q_proj", "k_proj", "v_proj", "projection_layer"):
        assert hasattr(layer.attention, name), name
    rope = {"type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}
    assert (
        Phi3Config(rope_scaling=rope, hidden_size=64, num_attention_heads=4).rope_parameters["rope_type"]
        == "longrope"
    )


@pytest.mark.parametrize("ps_version", ["v2", "v1"])
@torch.inference_mode()
def test_a_feature_in_one_quadrant_is_drawn_over_that_quadrant(ps_version: str, tmp_path: Path) -> None:
    """v1's pixel shuffle leaves the token grid transposed (the model was trained on it): a
    vision feature in the frame's top-right quadrant reaches token 2 of the 2 x 2 grid, which
    row-major overlays drew bottom-left. The layout says how the tokens run, and both the
    lens overlay's token centres and the attention heatmap put that token top-right."""
    from vlmflow.analyses.base import video_grid
    from vlmflow.models.regions import grid_entry, grid_values, token_centres

    path = build_mini_internvl(tmp_path / ps_version, layers=1, ps_version=ps_version)
    adapter = load_model(str(path), progress=False)
    model = adapter.model.model

    def features(quadrant: bool) -> torch.Tensor:
        """Image features when the vision tower's output is zero but, if ``quadrant``, in
        the patches of the top-right quadrant (rows 0-1, columns 2-3 of 4 x 4, after CLS)."""

        def hook(module, args, out):
            hidden = torch.zeros_like(out.last_hidden_state)
            side = int((hidden.shape[1] - 1) ** 0.5)
            if quadrant:
                for r in range(side // 2):
                    for c in range(side // 2, side):
                        hidden[:, 1 + r * side + c] = torch.linspace(-1, 1, hidden.shape[-1]) * (1 + r + c)
            out.last_hidden_state = hidden
            return out

        handle = model.vision_tower.register_forward_hook(hook)
        try:
            out = model.get_image_features(pixel_values=torch.zeros(1, 3, 32, 32)).pooler_output
        finally:
            handle.remove()
        return out.reshape(-1, out.shape[-1])

    change = (features(True) - features(False)).norm(dim=-1)
    assert int((change > 1e-6).sum()) == 1, change  # one token of the 2 x 2 grid holds the quadrant
    reached = int(change.argmax())

    layout = adapter.prepare(make_sample(frames=1)).layout
    assert layout.grid_order == ("column" if ps_version == "v1" else "row")
    entry = video_grid(layout)["video_grid"][0]
    _, h, w, order = grid_entry(entry)
    x, y = token_centres((h, w), (0.0, 0.0, 32.0, 32.0), order)[reached]
    assert x > 16 and y < 16, (ps_version, reached, (x, y))
    heat = grid_values(change.numpy(), entry)
    assert np.unravel_index(heat.argmax(), heat.shape) == (0, 1)
