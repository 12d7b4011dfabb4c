"""The PLLaVA adapter: prepares samples for :class:`PllavaForConditionalGeneration` and
places each pooled frame group's tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...errors import PromptError
from ...layout import Span
from ...prompt import PromptText
from ..base import MODELS, Adapter, VideoTokens, contiguous_run, default_dtype
from .modeling_pllava import is_pllava_config, load_pooled_llava, pllava_config, read_config_dict
from .processing_pllava import PllavaProcessor, expand_run


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
    def load_model(
        cls, path: str, *, pooling_shape: Sequence[int] | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        raw = read_config_dict(path)
        model, _ = load_pooled_llava(path, pllava_config(raw, pooling_shape, str(path)), **kwargs)
        processor = PllavaProcessor.from_pretrained(path, pooling_shape=model.pooling_shape, config=raw)
        return model, processor

    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        pooling_shape: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> Adapter:
        """As :meth:`Adapter.load`; ``pooling_shape`` ``(t, h, w)`` replaces the checkpoint's
        (PLLaVA: its config's, else ``(8, 16, 16)`` with a warning; the image baseline:
        ``(8, g/2, g/2)`` for a ``g x g`` patch grid)."""
        cls.check_options(str(path), kwargs)
        model, processor = cls.load_model(
            path,
            pooling_shape=pooling_shape,
            dtype=default_dtype(dtype, device),
            attn_implementation=attn_implementation,
        )
        return cls(model.to(device), processor, model_id=str(path), **kwargs)

    def processing(self) -> dict[str, Any]:
        """As the base class, with the ``pooling_shape`` the features are pooled to (the
        option or the checkpoint's), so a resume with another pooling is refused."""
        return {**super().processing(), "pooling_shape": [int(x) for x in self.model.pooling_shape]}

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
