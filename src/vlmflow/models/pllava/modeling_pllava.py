"""PLLaVA's modelling code (transformers has no PLLaVA class): the config from a raw
``config.json``, :class:`PllavaForConditionalGeneration` (HF ``LlavaForConditionalGeneration``
with PLLaVA's 3-D pooling and placeholder merge) and loading any LLaVA key layout into it.
See the package docstring for the architecture."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoint import load_weights
from ...errors import PromptError, UnsupportedModelError

log = logging.getLogger(__name__)
# PllavaConfig's pooling when a config names none; the paper's LLaVA-NeXT-Video-FT models
# (and PLLaVA's released ones) pool to (8, 12, 12) or (16, 12, 12) and say so in their config
DEFAULT_POOLING = (8, 16, 16)

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


def pllava_config(raw: dict[str, Any], pooling_shape: Any = None, where: str = "") -> Any:
    """A transformers ``LlavaConfig`` from PLLaVA's ``config.json`` dict.

    PLLaVA's own fields (``pooling_shape``, ``num_frames``, ...) ride along as config
    attributes. Sub-config defaults are LLaVA's (CLIP ViT-L/14-336, Llama), the same as
    ``PllavaConfig``'s, so configs saved as a diff against them read back identically.
    ``pooling_shape`` ``(t, h, w)`` (the adapter option) replaces the config's; a config
    without one gets PllavaConfig's :data:`DEFAULT_POOLING` with a warning naming it
    (``where``: the checkpoint, for messages).
    """
    from transformers import LlavaConfig

    where = where or str(raw.get("_name_or_path", ""))
    d = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "auto_map")}
    if pooling_shape is not None:
        d["pooling_shape"] = list(check_pooling_shape(pooling_shape, where))  # the grid: below
    elif "pooling_shape" not in d:
        log.warning(
            "%s: config.json has no pooling_shape; pooling to PllavaConfig's default %s (the paper's "
            "LLaVA-NeXT-Video-FT models pool to (8, 12, 12)); pass pooling_shape=(t, h, w) to choose",
            where,
            DEFAULT_POOLING,
        )
        d["pooling_shape"] = list(DEFAULT_POOLING)
    d.setdefault("num_frames", 1)
    config = LlavaConfig(**d)
    check_pooling_shape(config.pooling_shape, where, patch_grid(config))
    return config


def patch_grid(config: Any) -> int | None:
    """The side of the vision tower's patch grid (``image_size // patch_size``), if known."""
    vision = getattr(config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    return int(size) // int(patch) if isinstance(size, int) and isinstance(patch, int) and patch else None


def check_pooling_shape(shape: Any, where: str = "", grid: int | None = None) -> tuple[int, int, int]:
    """``shape`` as three positive integers ``(t, h, w)``; ``h`` and ``w`` at most the
    ``grid x grid`` patch grid (pooling beyond it would repeat patches, not pool them)."""
    try:
        values = tuple(shape)
        whole = [int(x) for x in values]
        exact = len(values) == 3 and all(
            not isinstance(x, bool) and float(x) == i for x, i in zip(values, whole, strict=True)
        )
    except (TypeError, ValueError):
        exact = False
    if not exact:
        msg = f"{where}: pooling_shape {shape!r} is not three integers (t, h, w)"
        raise UnsupportedModelError(msg) from None
    t, h, w = whole
    if min(t, h, w) < 1:
        raise UnsupportedModelError(f"{where}: pooling_shape {shape!r} must be positive")
    if grid is not None and max(h, w) > grid:
        raise UnsupportedModelError(
            f"{where}: pooling_shape {shape!r} pools to {h}x{w} tokens a frame, more than the vision "
            f"tower's {grid}x{grid} patch grid (it would repeat patches); use h, w <= {grid}"
        )
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
        self.pooling_shape = check_pooling_shape(
            getattr(config, "pooling_shape", None), "config", patch_grid(config)
        )
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


def read_repo_json(path: str, name: str) -> dict[str, Any] | None:
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
    keys are an error (:func:`~vlmflow.checkpoint.load_weights`): the model would run with
    random weights.
    """
    return load_weights(
        model_class(),
        path,
        hint="is it a LLaVA-layout checkpoint?",
        config=config,
        key_mapping=KEY_MAPPING,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )
