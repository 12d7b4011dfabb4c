"""PLLaVA-style VideoLLMs: the paper's LLaVA-NeXT-7B/13B-Video-FT checkpoints.

Architecture (REFERENCE_NOTES §3.1): a CLIP ViT tower read at ``vision_feature_layer``
(-2) without its CLS token gives an ``h x w`` patch grid per frame; the LLaVA projector
(``linear_1 -> GELU -> linear_2``) maps every patch into the LLM embedding space; then
the frames of one video are rearranged to ``(d, T, h, w)`` and **3-D average pooled**
(``nn.AdaptiveAvgPool3d(pooling_shape)``, ``(8, 12, 12)`` for the paper's models) and
flattened in ``(t, h, w)`` row-major order. The prompt holds a single ``<image>``
placeholder that stands for all ``t * h' * w'`` pooled embeddings, with no separators
between frames and plain 1-D positions over the expanded sequence.

Transformers has no PLLaVA class. :class:`PllavaForConditionalGeneration` is HF's own
``LlavaForConditionalGeneration`` (CLIP tower, LLaVA projector, Llama decoder, head; so
the decoder sits at ``model.model.language_model`` as in every HF family) with PLLaVA's
pooling and placeholder merge in ``forward``. Checkpoints keep PLLaVA's key layout
(``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}.*``,
``language_model.model.*``, ``language_model.lm_head.weight``); :data:`KEY_MAPPING`
renames them on load through ``from_pretrained(key_mapping=...)``, and also accepts
the layouts that later transformers versions save.

PLLaVA's ``config.json`` says ``model_type`` ``"llava"`` (map-the-flow) or ``"pllava"``
(magic-research); :func:`is_pllava_config` recognises it by its ``pooling_shape`` /
``use_pooling`` fields or its ``architectures`` entry, so plain LLaVA checkpoints
(also ``"llava"``) are not claimed.

The processor (:class:`PllavaProcessor`) reproduces PLLaVA's: a long/short-edge resize
of the whole video, then the CLIP image processor (shortest-edge resize, centre crop,
CLIP mean/std), and a tokenizer. Unlike PLLaVA's, it writes the placeholder out as one
``<image>`` token per pooled embedding (as HF ``LlavaProcessor`` does), so the token ids
the engine sees line up one-to-one with the positions the decoder layers see.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PromptError, UnsupportedModelError
from ..layout import Span
from ..prompt import PromptText
from .base import MODELS, Adapter, VideoTokens, contiguous_run

log = logging.getLogger(__name__)

# PLLaVA / legacy-LLaVA / transformers>=4.52 / transformers 5 key names -> HF Llava module names.
# Every pattern is idempotent on names already in the target layout.
KEY_MAPPING: dict[str, str] = {
    r"^language_model\.lm_head\.": "lm_head.",
    r"^language_model\.model\.": "model.language_model.",
    r"^(?:model\.)?vision_tower\.(?:vision_model\.)?": "model.vision_tower.",
    r"^multi_modal_projector\.": "model.multi_modal_projector.",
}
PLLAVA_FIELDS = ("pooling_shape", "use_pooling", "pooling_method", "frame_shape")
PLLAVA_MODEL_TYPES = ("llava", "pllava")
PROCESSOR_FILE = "pllava_processor.json"
LONG_EDGE_CAP = 640  # PLLaVA's resize_crop_longshort caps the long edge at 640 px


def is_pllava_config(config: dict[str, Any]) -> bool:
    """Whether a raw ``config.json`` dict describes a PLLaVA checkpoint."""
    if config.get("model_type") not in PLLAVA_MODEL_TYPES:
        return False
    archs = config.get("architectures") or []
    return any(f in config for f in PLLAVA_FIELDS) or any("pllava" in str(a).lower() for a in archs)


def read_config_dict(path: str) -> dict[str, Any]:
    """The raw ``config.json`` of a local folder or hub id."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot read a model config from {path!r}: {exc}") from exc
    return config


def pllava_config(raw: dict[str, Any]) -> Any:
    """A transformers ``LlavaConfig`` from PLLaVA's ``config.json`` dict.

    PLLaVA's own fields (``pooling_shape``, ``num_frames``, ...) ride along as config
    attributes. Sub-config defaults are LLaVA's (CLIP ViT-L/14-336, Llama), the same as
    ``PllavaConfig``'s, so configs saved as a diff against them read back identically.
    """
    from transformers import LlavaConfig

    d = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "auto_map")}
    d.setdefault("pooling_shape", [8, 16, 16])  # PllavaConfig's default
    d.setdefault("num_frames", 1)
    config = LlavaConfig(**d)
    check_pooling_shape(config.pooling_shape, str(raw.get("_name_or_path", "")))
    return config


def check_pooling_shape(shape: Any, where: str = "") -> tuple[int, int, int]:
    try:
        t, h, w = (int(x) for x in shape)
    except (TypeError, ValueError):
        msg = f"{where}: pooling_shape {shape!r} is not three integers (t, h, w)"
        raise UnsupportedModelError(msg) from None
    if min(t, h, w) < 1:
        raise UnsupportedModelError(f"{where}: pooling_shape {shape!r} must be positive")
    return t, h, w


@functools.cache
def model_class() -> type:
    """:class:`PllavaForConditionalGeneration`, defined on first use so that importing
    vlmflow does not import transformers."""
    from transformers import LlavaForConditionalGeneration

    return type(
        "PllavaForConditionalGeneration",
        (_PllavaMixin, LlavaForConditionalGeneration),
        {"__module__": __name__, "__doc__": _PllavaMixin.__doc__},
    )


def __getattr__(name: str) -> Any:
    if name == "PllavaForConditionalGeneration":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _PllavaMixin:
    """HF ``LlavaForConditionalGeneration`` with PLLaVA's 3-D pooling and placeholder merge.

    ``config`` is a ``LlavaConfig`` carrying ``pooling_shape`` ``(t, h, w)`` and
    ``num_frames`` (PLLaVA repeats the frames of a shorter video up to ``num_frames``).
    The pooling layer has no parameters, so the state dict is exactly LLaVA's.
    """

    # LLaVA-NeXT's AnyRes row separator: unused without tiling (the image baseline's checkpoints)
    _keys_to_ignore_on_load_unexpected = [r"image_newline$"]
    config: Any
    model: Any
    lm_head: nn.Module

    def __init__(self, config: Any) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self.pooling_shape = check_pooling_shape(getattr(config, "pooling_shape", None), "config")
        self.video_pooling = nn.AdaptiveAvgPool3d(self.pooling_shape)

    def get_video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled video embeddings ``(B, t*h'*w', d)`` of frames ``(B, T, C, H, W)``.

        Rows are in ``(t, h, w)`` row-major order: pooled frame group ``i`` is rows
        ``[i*h'*w', (i+1)*h'*w')``.
        """
        cfg = self.config
        b, t = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1).to(self.model.vision_tower.dtype)
        out = self.model.vision_tower(frames, output_hidden_states=True)
        feats = out.hidden_states[cfg.vision_feature_layer]  # (B*T, 1 + h*w, c)
        if cfg.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                f"vision_feature_select_strategy {cfg.vision_feature_select_strategy!r}: PLLaVA pooling "
                "needs the patch grid without the CLS token ('default')"
            )
        feats = self.model.multi_modal_projector(feats[:, 1:])  # (B*T, h*w, d)
        patch = cfg.vision_config.patch_size
        h, w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        if h * w != feats.shape[1]:
            raise UnsupportedModelError(f"{feats.shape[1]} patches per frame do not form a {h}x{w} grid")
        feats = feats.view(b, t, h, w, -1)
        num_frames = int(getattr(cfg, "num_frames", 1) or 1)
        if t < num_frames:  # PLLaVA: repeat frames of a short video (may drop the last ones)
            idx = torch.arange(t, device=feats.device).repeat_interleave(num_frames // t + 1)[:num_frames]
            feats = feats.index_select(1, idx)
        video = self.video_pooling(feats.permute(0, 4, 1, 2, 3))  # (B, d, t', h', w')
        return video.flatten(2).transpose(1, 2)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        """Merge the pooled video into the text and run the language model.

        ``input_ids`` ``(B, N)`` hold either one ``<image>`` token per pooled embedding
        (what :class:`PllavaProcessor` writes; replaced in place) or a single ``<image>``
        per row (PLLaVA's own format; spliced out into ``t*h'*w'`` positions, the
        attention mask widened to match). ``pixel_values``: ``(B, T, C, H, W)`` or
        ``(B*T, C, H, W)``. Position ids are plain 1-D over the merged sequence
        (``cumsum(attention_mask) - 1``, as PLLaVA). Returns logits for the last
        ``logits_to_keep`` positions (all when 0) and the cache.
        """
        from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        image_id = self.config.image_token_index
        if inputs_embeds is None:
            assert input_ids is not None
            safe_ids = input_ids.masked_fill(input_ids == image_id, 0)  # the id may lie outside the vocab
            inputs_embeds = self.get_input_embeddings()(safe_ids)
            if pixel_values is not None:
                inputs_embeds, attention_mask = self._merge(
                    input_ids, inputs_embeds, pixel_values, attention_mask
                )
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None and attention_mask is not None and past == 0:
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        out = self.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        return LlavaCausalLMOutputWithPast(
            logits=logits, cache=out.cache, hidden_states=out.hidden_states, attentions=out.attentions
        )

    def _merge(
        self,
        input_ids: torch.Tensor,
        embeds: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = input_ids.shape[0]
        if pixel_values.dim() == 4:  # (B*T, C, H, W)
            pixel_values = pixel_values.view(batch, -1, *pixel_values.shape[1:])
        video = self.get_video_features(pixel_values).to(embeds.dtype)  # (B, n, d)
        n = video.shape[1]
        is_image = input_ids == self.config.image_token_index
        counts = is_image.sum(-1)
        if bool((counts == n).all()):
            return embeds.masked_scatter(is_image[..., None], video), attention_mask
        if not bool((counts == 1).all()):
            raise PromptError(
                f"each sequence needs either one <image> placeholder or {n} <image> tokens (one per "
                f"pooled video embedding); got {counts.tolist()}"
            )
        at = is_image.float().argmax(-1).tolist()
        rows = [torch.cat([embeds[i, :p], video[i], embeds[i, p + 1 :]]) for i, p in enumerate(at)]
        if attention_mask is not None:
            ones = attention_mask.new_ones(n)
            m = attention_mask
            widened = [torch.cat([m[i, :p], ones, m[i, p + 1 :]]) for i, p in enumerate(at)]
            attention_mask = torch.stack(widened)
        return torch.stack(rows), attention_mask


class PllavaProcessor:
    """PLLaVA's processor: long/short-edge video resize, CLIP frames, tokenizer.

    ``image_processor`` is a CLIP image processor (PIL backend, as transformers 4.40's
    ``CLIPImageProcessor`` that PLLaVA used). One video's placeholder expands into
    ``t*h'*w'`` tokens for a ``pooling_shape`` (whatever the frame count), or into
    ``T * tokens_per_frame`` without pooling (the paper's Mini-InternVL reuses this
    processor). Saved next to the checkpoint as the image processor's and tokenizer's own
    files plus ``pllava_processor.json``; a folder without that file (PLLaVA's own
    checkpoints) takes ``pooling_shape`` and the placeholder from ``config.json``.
    """

    chat_template = None  # PLLaVA has none: the paper's prompt is built by vlmflow.prompt

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        *,
        pooling_shape: Sequence[int] | None = None,
        tokens_per_frame: int | None = None,
        image_token: str = "<image>",
    ) -> None:
        if (pooling_shape is None) == (tokens_per_frame is None):
            raise UnsupportedModelError("PllavaProcessor takes one of pooling_shape and tokens_per_frame")
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        shape = None if pooling_shape is None else check_pooling_shape(pooling_shape, "processor")
        self.pooling_shape = shape
        self.tokens_per_frame = tokens_per_frame
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise UnsupportedModelError(f"the tokenizer has no {image_token!r} token")

    def num_video_tokens(self, num_frames: int) -> int:
        """How many placeholder tokens one video of ``num_frames`` frames expands into."""
        if self.pooling_shape is not None:
            return math.prod(self.pooling_shape)
        assert self.tokens_per_frame is not None
        return num_frames * self.tokens_per_frame

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        extra: dict[str, Any] = {"processor_class": type(self).__name__, "image_token": self.image_token}
        if self.pooling_shape is not None:
            extra["pooling_shape"] = list(self.pooling_shape)
        else:
            extra["tokens_per_frame"] = self.tokens_per_frame
        (path / PROCESSOR_FILE).write_text(json.dumps(extra, indent=1) + "\n")

    @classmethod
    def from_pretrained(
        cls, path: str, *, pooling_shape: Sequence[int] | None = None, config: dict[str, Any] | None = None
    ) -> PllavaProcessor:
        """Load from a checkpoint folder or hub id (``config``: its raw ``config.json``)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        extra = _read_json(path, PROCESSOR_FILE) or {}
        if config is None:
            try:
                config = read_config_dict(path)
            except UnsupportedModelError:  # a processor saved on its own
                config = {}
        image_token = extra.get("image_token")
        if image_token is None:
            image_token = tokenizer.convert_ids_to_tokens(int(config.get("image_token_index", 32000)))
        image_processor = clip_image_processor(path, config)
        if pooling_shape is None and "tokens_per_frame" in extra:
            per_frame = int(extra["tokens_per_frame"])
            return cls(image_processor, tokenizer, tokens_per_frame=per_frame, image_token=image_token)
        shape = pooling_shape or extra.get("pooling_shape") or config.get("pooling_shape") or (8, 16, 16)
        return cls(image_processor, tokenizer, pooling_shape=shape, image_token=image_token)

    # ------------------------------------------------------------------ processing
    def __call__(
        self,
        text: str | list[str] | None = None,
        videos: Sequence[Sequence[np.ndarray]] | None = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``text``: prompts, each with one ``<image>`` per video; ``videos``: one list of
        ``(H, W, 3)`` uint8 frames per video (all the same length). Returns ``input_ids``
        and ``attention_mask`` ``(B, N)`` and ``pixel_values`` ``(V, T, 3, S, S)``."""
        if return_tensors != "pt":
            raise UnsupportedModelError("PllavaProcessor returns PyTorch tensors only (return_tensors='pt')")
        out: dict[str, Any] = {}
        num_frames = 0
        if videos is not None and len(videos):
            clips = self.resize_long_short([[np.asarray(f) for f in v] for v in videos])
            lengths = {len(v) for v in clips}
            if len(lengths) != 1:
                raise PromptError(f"videos of one batch must have equal frame counts, got {sorted(lengths)}")
            num_frames = lengths.pop()
            pixels = [self.image_processor(v, return_tensors="np")["pixel_values"] for v in clips]
            out["pixel_values"] = torch.from_numpy(np.stack(pixels))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            placeholders = sum(t.count(self.image_token) for t in texts)
            if placeholders != (len(videos) if videos is not None else 0):
                raise PromptError(
                    f"{placeholders} {self.image_token!r} placeholders for "
                    f"{len(videos) if videos is not None else 0} videos"
                )
            run = self.image_token * self.num_video_tokens(num_frames)
            expanded = [t.replace(self.image_token, run) for t in texts]
            enc = self.tokenizer(expanded, return_tensors="pt", padding=len(expanded) > 1, **kwargs)
            out["input_ids"] = enc["input_ids"]
            out["attention_mask"] = enc["attention_mask"]
        return out

    def resize_long_short(self, videos: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """PLLaVA's pre-resize of a batch of videos (``resize_crop_longshort``), re-stated.

        The short edge goes to ``s = max(clip, min(max short edge, cap / r))`` where ``r``
        is the smallest long/short ratio in the batch and ``cap = min(640, max long edge)``;
        each video is resized (bicubic, aspect kept) and cut along its long edge to
        ``int(s * r)`` px. The cut starts at a quarter of the excess, not half (as PLLaVA's
        code does); for one video the excess is 0 or 1 px, so the net effect per frame is
        a bicubic resize before the CLIP resize and centre crop.
        """
        from transformers.image_transforms import get_resize_output_image_size, resize
        from transformers.image_utils import ChannelDimension, PILImageResampling

        last = ChannelDimension.LAST
        sizes = [v[0].shape[:2] for v in videos]
        rates = [max(s) / min(s) for s in sizes]
        rate = min(rates)
        clip = self.image_processor.size.get("shortest_edge") or self.image_processor.size.get("height")
        cap = min(LONG_EDGE_CAP, max(max(s) for s in sizes))
        short = max(min(max(min(s) for s in sizes), int(cap / rate)), int(clip))
        long = int(short * rate)
        out = []
        for video in videos:
            frames = []
            for frame in video:
                size = get_resize_output_image_size(
                    frame, size=short, default_to_square=False, max_size=9999, input_data_format=last
                )
                frame = resize(frame, size, resample=PILImageResampling.BICUBIC, input_data_format=last)
                h, w = frame.shape[:2]
                start = max(0, ((max(h, w) - long) // 2) // 2)  # PLLaVA: no clamp (breaks at -1)
                frame = frame[start : start + long] if h > w else frame[:, start : start + long]
                frames.append(frame)
            out.append(frames)
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


def expand_run(prompt: PromptText, input_ids: torch.Tensor, token_id: int) -> tuple[str, int]:
    """The prompt with its placeholder written out once per ``token_id`` in ``input_ids``
    ``(1, N)`` (as the processor did), and the character shift of the text after it."""
    n = int((input_ids[0] == token_id).sum())
    tok, at = prompt.placeholder, prompt.placeholder_at
    return prompt.text[:at] + tok * n + prompt.text[at + len(tok) :], (n - 1) * len(tok)


def clip_image_processor(path: str, config: dict[str, Any]) -> Any:
    """The checkpoint's CLIP image processor (PIL backend), or CLIP defaults at the tower's
    resolution when the folder has no ``preprocessor_config.json``."""
    from transformers import CLIPImageProcessorPil

    try:
        return CLIPImageProcessorPil.from_pretrained(path)
    except OSError:
        size = int((config.get("vision_config") or {}).get("image_size", 336))
        log.warning("%s has no preprocessor_config.json; using CLIP preprocessing at %d px", path, size)
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _read_json(path: str, name: str) -> dict[str, Any] | None:
    local = Path(path) / name
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        return None
    try:  # a hub id
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, name)).read_text())
    except Exception:  # absent file, offline, ...: fall back to config.json
        return None


def load_pooled_llava(
    path: str, config: Any, *, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[Any, dict[str, Any]]:
    """Load weights in any LLaVA key layout into :class:`PllavaForConditionalGeneration`.

    Returns the model and transformers' loading info (missing/unexpected keys). Missing
    keys are an error: the model would run with random weights.
    """
    model, info = model_class().from_pretrained(
        path,
        config=config,
        key_mapping=KEY_MAPPING,
        dtype=dtype,
        attn_implementation=attn_implementation,
        output_loading_info=True,
    )
    if info["missing_keys"] or info.get("mismatched_keys"):
        raise UnsupportedModelError(
            f"{path}: weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}, "
            f"mismatched: {sorted(info.get('mismatched_keys') or ())[:5]}; is it a LLaVA-layout checkpoint?"
        )
    unexpected = sorted(info["unexpected_keys"])
    if unexpected:
        log.warning("%s: %d checkpoint weights not used, e.g. %s", path, len(unexpected), unexpected[:3])
    return model, info


@MODELS.register("pllava", "LLaVA-NeXT-*-Video-FT / PLLaVA: one <image> = 3-D pooled CLIP features")
class PllavaAdapter(Adapter):
    """Adapter for PLLaVA-layout checkpoints (the paper's LLaVA-NeXT-7B/13B-Video-FT).

    Claimed through :meth:`matches` (their ``model_type`` is ``llava``, which plain
    LLaVA shares). Frame group ``i`` is pooled temporal slice ``i``: ``T / t`` input
    frames (``frames_per_group``), ``h' x w'`` tokens at ``[s + i*h'*w', s + (i+1)*h'*w')``.
    """

    family = "pllava"
    model_types = ()  # 'llava' is plain LLaVA's too: PLLaVA configs are claimed by `matches`
    supports = Adapter.supports + " (claims llava/pllava configs with pooling_shape)"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return is_pllava_config(config)

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        raw = read_config_dict(path)
        model, _ = load_pooled_llava(path, pllava_config(raw), **kwargs)
        processor = PllavaProcessor.from_pretrained(path, pooling_shape=model.pooling_shape, config=raw)
        return model, processor

    @property
    def video_placeholder(self) -> str:
        return self.processor.image_token

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        return expand_run(prompt, input_ids, self.processor.image_token_id)

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        t_in = int(inputs["pixel_values"].shape[1])  # (1, T, C, H, W)
        t, h, w = self.model.pooling_shape
        num_frames = int(getattr(self.model.config, "num_frames", 1) or 1)
        if t_in < num_frames or t_in % t:
            raise PromptError(
                f"{self.model_id}: {t_in} frames cannot be split into the {t} pooled frame groups "
                f"(pooling_shape {self.model.pooling_shape}, num_frames {num_frames}); use a multiple of "
                f"{t} that is at least {max(t, num_frames)} (--num-frames)"
            )
        video = contiguous_run(input_ids, self.processor.image_token_id, "video")
        n = h * w
        if len(video) != t * n:
            shape = self.model.pooling_shape
            raise PromptError(f"{len(video)} video tokens, but pooling_shape {shape} gives {t * n}")
        frames = tuple(Span(video.start + i * n, video.start + (i + 1) * n) for i in range(t))
        return VideoTokens(video, frames, ((h, w),) * t, frames_per_group=t_in // t)
