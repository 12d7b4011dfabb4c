"""Adapters for Hugging Face ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration``.

How these families see a video. The vision tower cuts the clip into *temporal patches* of
``temporal_patch_size`` (2) consecutive frames and fuses each pair into one set of
``(H / patch / merge) x (W / patch / merge)`` visual tokens (``video_grid_thw`` holds
``(t, H / patch, W / patch)``). Two fused frames cannot be told apart inside the model, so
a vlmflow *frame group* here is one temporal patch (``frames_per_group = 2``): ``frame:T``
means input frames ``2T`` and ``2T + 1``. An odd frame count is padded by the processor
with a copy of the last frame, so the last group then holds one real frame (a single
frame too: Qwen3-VL's processor refuses it, so its adapter adds the copy itself).

Where the tokens are. The prompt carries the placeholder
``<|vision_start|><|video_pad|><|vision_end|>`` (what the Qwen chat templates write for a
video); the processor expands the inner ``<|video_pad|>`` (Qwen3-VL from transformers 5.25
on: the whole placeholder, see below):

- Qwen2-VL / Qwen2.5-VL: into ``t * h * w`` video tokens, one contiguous run, temporal
  patch ``T`` at ``[s + T*n, s + (T+1)*n)``.
- Qwen3-VL: into, per temporal patch, a timestamp text ``<1.2 seconds>`` followed by
  ``<|vision_start|>`` + ``n`` video tokens + ``<|vision_end|>``.

Layout decision: ``video`` is exactly the processor's expansion of ``<|video_pad|>`` (its
own replacement text, taken from the processor), so for Qwen2/2.5-VL the visual tokens
only, and for Qwen3-VL the timestamps and per-patch start/end markers too: in Qwen3-VL the
timestamps are how time is encoded, and each patch's ``<|vision_end|>`` is the first token
that has read that patch. The outer ``<|vision_start|>``/``<|vision_end|>`` written by the
prompt belong to the template. Frame groups partition ``video``: for Qwen3-VL a group is
``timestamp + <|vision_start|> + grid + <|vision_end|>`` with ``frame_token_offsets``
pointing at its grid. Counts come from ``video_grid_thw`` and the merge size, and each run
is checked against the token ids, never split evenly.

Qwen3-VL's outer pair depends on the transformers version. Up to 5.24 the processor
expands only ``<|video_pad|>``, so the model sees the outer pair around the per-patch ones;
from 5.25 it replaces the whole placeholder (as Qwen's own processor did), so there is no
outer pair, and the first timestamp follows the prompt's text directly, where the
tokenizer may merge it with what precedes it (``"USER: <0.2 seconds>"`` gives ``" <"``).
The first group then starts at the token holding the timestamp's first character, found
from the tokenizer's offsets, and holds that merged text too.

Positions (M-RoPE) are never recomputed here: the model computes them from ``input_ids``,
``mm_token_type_ids`` and ``video_grid_thw`` (all passed, so no stale ``rope_deltas`` can be
reused), and the engine replays the rotary embeddings the layers received. Qwen3-VL's
deepstack features, added to the residual stream after the first decoder layers outside
the layer modules, are replayed by the engine as between-layer additions: the adapter
records the features as the model adds them, so a recompute adds them to its own hidden
state in the model's dtype, as the model does (exact in bf16 too).

Pixel budget. Qwen2-VL and Qwen2.5-VL repositories ship no video processor config, so
their frames would get the image limits (up to 12.8 M pixels a frame: 2,691 tokens per
frame group for a 1080p clip). The adapter applies the reference pipeline's video budget
instead (qwen-vl-utils: 128 to 768 tokens' worth of pixels a frame, ``VIDEO_MIN_PIXELS`` /
``VIDEO_MAX_PIXELS``, and an even share per frame of a 128,000-token total,
``VIDEO_TOTAL_PIXELS``, which transformers applies with ``cap_pixels_per_frame``).
``video_pixels=(min, max)`` sets the per-frame bounds, ``None`` keeps the processor's own;
the default (``"reference"``) is the reference's bounds where the repository has no video
config and the video config's own where it has one.

Qwen3-VL repositories ship a video config whose ``size`` is a budget for the whole clip
(frames x H x W; Qwen3-VL-8B-Instruct: 4 to 24,576 tokens' worth). By default it is used
as is, with transformers' per-frame cap on top (``cap_pixels_per_frame``, always passed:
each frame at most ``max_video_tokens``, 768, tokens' worth of pixels and at most an even
share of that clip budget). That is not qwen-vl-utils' rule, which ignores the config's
``size`` (Qwen's own pipeline calls the processor with ``do_resize=False``) and bounds each
frame by 128 to 768 tokens' worth and an even share of 128,000 x 0.9 tokens' worth (times 2
frames): the two agree for frames of 128 tokens' worth or more up to 32 frames; beyond 32
frames the default gives fewer tokens (64 frames of 1920 x 1080: 364 a temporal patch vs
720) and it never raises small frames to the 128-token floor (8 frames of 320 x 180: 60 vs
144). ``video_pixels=(min, max)`` on Qwen3-VL means per-frame bounds as for the other
families: the adapter applies qwen-vl-utils' rule with them (at most ``max`` and an even
share of the total, at least 1.05 ``min``; an odd frame count padded to even first, as
qwen-vl-utils pads it) and passes the processor that per-frame size times the frame count
as its clip ``size``, with its own cap off; ``(128*32*32, 768*32*32)`` gives qwen-vl-utils'
frame sizes. The budget is recorded in :meth:`processing`.

Frame times. vlmflow's loaders return frames without decode times, so the adapter tells
the processor they are evenly spaced at ``frames_per_second`` (default: the video
processor's own sampling rate, 2 fps for the released checkpoints). This sets Qwen3-VL's
timestamp text and Qwen2.5-VL's temporal position step (``second_per_grid_ts``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from ..checkpoint import load_weights
from ..engine import LanguageModel
from ..errors import PromptError
from ..layout import Span
from ..prompt import PromptText
from .base import MODELS, Adapter, VideoTokens
from .frames import Expansion, _token_at
from .processors import built_from_image_settings, load_processor

_DEFAULT_FPS = 2.0
# qwen-vl-utils' video defaults (vision_process.py): per-frame pixel bounds in 28 x 28 units
REFERENCE_VIDEO_PIXELS = (128 * 28 * 28, 768 * 28 * 28)
# qwen-vl-utils' total video budget: 90% of MODEL_SEQ_LEN (128,000) tokens' worth of pixels,
# shared evenly by the frames, each temporal patch of FRAME_FACTOR (2) counting once
REFERENCE_TOTAL_TOKENS = 128000
REFERENCE_FRAME_FACTOR = 2


class QwenVLAdapter(Adapter):
    """What Qwen2-VL, Qwen2.5-VL and Qwen3-VL share; subclasses name their classes and say
    how a temporal patch's tokens are framed."""

    model_class: ClassVar[str] = ""
    processor_class: ClassVar[str] = ""
    video_processor_class: ClassVar[str] = "Qwen2VLVideoProcessor"
    supports = Adapter.supports + " (frame group = temporal patch of 2 frames)"

    video_pixels_default: ClassVar[tuple[int, int] | None] = REFERENCE_VIDEO_PIXELS
    # the reference's cap (transformers' cap_pixels_per_frame, passed on every call so that a
    # change of transformers' default cannot change the inputs): Qwen2/2.5-VL bound each
    # frame's share of a total budget, Qwen3-VL each frame's share of its whole-clip budget
    total_pixel_budget: ClassVar[bool] = True
    # the video processor's ``size`` bounds the whole clip (frames x H x W), not one frame
    # (Qwen3-VL): per-frame ``video_pixels`` are then turned into a clip size per call
    clip_size: ClassVar[bool] = False
    # ``frames_per_second`` changes the inputs (Qwen2.5-VL's temporal position step,
    # Qwen3-VL's timestamp text; Qwen2-VL's inputs do not depend on it)
    fps_in_inputs: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        frames_per_second: float | None = None,
        video_pixels: tuple[int, int] | None | str = "reference",
        **kwargs: Any,
    ):
        super().__init__(model, processor, **kwargs)
        if video_pixels == "reference":
            own = not built_from_image_settings(processor.video_processor)
            video_pixels = None if own else self.video_pixels_default
        # (min, max) pixels per frame; None: the video processor's own
        self.video_pixels: tuple[int, int] | None = video_pixels  # type: ignore[assignment]
        fps = frames_per_second or getattr(processor.video_processor, "fps", None) or _DEFAULT_FPS
        self.frames_per_second = float(fps)
        # the processor's expansion of the placeholder in the prompt being prepared
        # (what it replaced, with what); set by ``process``
        self._expansion: Expansion | None = None
        # sliding-window layers (use_sliding_window) are left to the engine's
        # check_full_attention, which refuses only a window shorter than the input

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        import transformers

        model, _ = load_weights(getattr(transformers, cls.model_class), path, **kwargs)
        processor = load_processor(
            getattr(transformers, cls.processor_class), getattr(transformers, cls.video_processor_class), path
        )
        return model, processor

    # ------------------------------------------------------------------ prompt
    @property
    def video_placeholder(self) -> str:
        """``<|vision_start|><|video_pad|><|vision_end|>``, as the Qwen chat templates write it
        (the processor expands the ``<|video_pad|>`` in it, or the whole of it: see the module doc)."""
        cfg = self.model.config
        start, end = self.tokenizer.convert_ids_to_tokens(
            [cfg.vision_start_token_id, cfg.vision_end_token_id]
        )
        return start + self.processor.video_token + end

    def process(self, text: str, frames: np.ndarray, *, timed: int | None = None) -> dict[str, Any]:
        """Real processor on one prompt and one video ``(T, H, W, 3)`` uint8.

        The frames are already sampled by vlmflow (``do_sample_frames=False``); their times
        are declared evenly spaced at ``frames_per_second`` (the first ``timed`` frames'
        only, default all: the processor gives the others the last one's time). The
        processor's own placeholder expansion is kept for :meth:`expand_placeholder` and
        :meth:`video_tokens`.
        """
        from transformers.video_utils import VideoMetadata

        n = len(frames)
        k = n if timed is None else timed
        meta = VideoMetadata(total_num_frames=k, fps=self.frames_per_second, frames_indices=list(range(k)))
        out = dict(
            self.processor(
                text=text,
                videos=[list(frames)],
                video_metadata=[meta],
                do_sample_frames=False,
                return_text_replacement_offsets=True,
                return_tensors="pt",
                **self._budget(n),
            )
        )
        replaced = [r for r in out.pop("text_replacement_offsets")[0] if r["type"] == "video"]
        if len(replaced) != 1:
            raise PromptError(
                f"expected one video placeholder in the prompt, the processor found {len(replaced)}"
            )
        start, end = replaced[0]["span"]
        self._expansion = Expansion(text, int(start), int(end), replaced[0]["replacement"])
        if "second_per_grid_ts" in out:
            # seconds per temporal patch (Qwen2.5-VL): kept as Python floats so that casting
            # the inputs to the model dtype (bf16) cannot round the temporal positions
            out["second_per_grid_ts"] = [float(x) for x in out["second_per_grid_ts"]]
        return out

    def processing(self) -> dict[str, Any]:
        """As the base class, with the video pixel budget the processor is run with
        (``video_budget``: its ``size`` bounds, whether the reference's per-frame cap applies,
        and the cap's ``max_video_tokens``), so a resume under a transformers whose defaults
        changed them is refused instead of silently processing inputs otherwise; and, where
        the inputs depend on it, ``frames_per_second`` (the resolved rate, so a folder
        started before it was recorded resumes at the default it used)."""
        timed = {"frames_per_second": self.frames_per_second} if self.fps_in_inputs else {}
        vp = self.processor.video_processor
        if self.video_pixels is not None and self.clip_size:
            low, high = (int(x) for x in self.video_pixels)
            budget = {
                "shortest_edge": low,
                "longest_edge": high,
                "per_frame": True,
                "total_pixels": self._total_pixels(),
            }
            return {**super().processing(), "video_budget": budget, **timed}
        if self.video_pixels is not None:
            low, high = (int(x) for x in self.video_pixels)
        else:
            low, high = int(vp.size["shortest_edge"]), int(vp.size["longest_edge"])
        budget = {
            "shortest_edge": low,
            "longest_edge": high,
            "cap_pixels_per_frame": bool(self.total_pixel_budget),
            "max_video_tokens": getattr(vp, "max_video_tokens", None),
        }
        return {**super().processing(), "video_budget": budget, **timed}

    def _total_pixels(self) -> float:
        """qwen-vl-utils' total video budget in pixels at this processor's patch x merge."""
        vp = self.processor.video_processor
        factor = int(vp.patch_size) * int(vp.merge_size)
        return REFERENCE_TOTAL_TOKENS * factor * factor * 0.9

    def _budget(self, frames: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.video_pixels is not None and self.clip_size:
            # qwen-vl-utils' per-frame bound (fetch_video): at most ``max`` and an even share of
            # the total budget, at least 1.05 ``min``; the processor bounds the clip, so the
            # per-frame bounds go in times the frame count (even: see Qwen3VLAdapter.process)
            # and its own cap is off (it would share the clip bound, not the total budget)
            low, high = (int(x) for x in self.video_pixels)
            share = self._total_pixels() / frames * REFERENCE_FRAME_FACTOR
            per_frame = max(min(high, share), int(low * 1.05))
            # (a whole number of pixels, as the processor takes: the same frame sizes, for
            # a frame's integer pixel count exceeds the share exactly when it exceeds this)
            kwargs["size"] = {"shortest_edge": low * frames, "longest_edge": int(per_frame * frames)}
            kwargs["cap_pixels_per_frame"] = False
            return {"videos_kwargs": kwargs}
        if self.video_pixels is not None:
            low, high = self.video_pixels
            kwargs["size"] = {"shortest_edge": int(low), "longest_edge": int(high)}
        if self.total_pixel_budget:
            kwargs["cap_pixels_per_frame"] = True
        return {"videos_kwargs": kwargs} if kwargs else {}

    def _replacement(self) -> Expansion:
        if self._expansion is None:
            raise PromptError("expand_placeholder/video_tokens called before process()")
        return self._expansion

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        e = self._replacement()
        at, width = prompt.placeholder_at, len(prompt.placeholder)
        if e.prompt != prompt.text or not at <= e.start < e.end <= at + width:
            raise PromptError(
                f"the processor expanded {e.prompt[e.start : e.end]!r} at character {e.start}, outside "
                f"the video placeholder {prompt.placeholder!r} at {at}"
            )
        return e.text, len(e.replacement) - (e.end - e.start)

    # ------------------------------------------------------------------ layout
    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        """One frame group per temporal patch; the grid of each from ``video_grid_thw``."""
        cfg = self.model.config
        grid_thw = inputs["video_grid_thw"]
        if grid_thw.shape[0] != 1:
            raise PromptError(f"expected one video, the processor made {grid_thw.shape[0]}")
        t, grid_h, grid_w = (int(x) for x in grid_thw[0])
        merge = cfg.vision_config.spatial_merge_size
        h, w = grid_h // merge, grid_w // merge
        n = h * w
        pos = torch.nonzero(input_ids[0] == cfg.video_token_id).flatten()
        if pos.numel() != t * n:
            raise PromptError(
                f"{pos.numel()} video tokens for {t} temporal patches of {h}x{w}; the processor and "
                "the model disagree on tokens per patch"
            )
        runs = []
        for i in range(t):
            a, b = int(pos[i * n]), int(pos[(i + 1) * n - 1]) + 1
            if b - a != n:
                raise PromptError(f"the video tokens of temporal patch {i} are not one contiguous run")
            runs.append(Span(a, b))
        frames = self._frame_spans(input_ids[0].tolist(), runs)
        video = Span(frames[0].start, frames[-1].end)
        offsets = tuple(r.start - f.start for r, f in zip(runs, frames, strict=True))
        return VideoTokens(
            video=video,
            frames=frames,
            grids=((h, w),) * t,
            frames_per_group=int(self.processor.video_processor.temporal_patch_size),
            grid_offsets=offsets if any(offsets) else (),
        )

    def _frame_spans(self, ids: list[int], runs: list[Span]) -> tuple[Span, ...]:
        """Each temporal patch's span from its run of video tokens (Qwen2/2.5-VL: the run)."""
        for prev, nxt in zip(runs, runs[1:], strict=False):
            if prev.end != nxt.start:
                raise PromptError("the video tokens are not one contiguous run")
        return tuple(runs)

    # ------------------------------------------------------------------ handles


@MODELS.register("qwen2_vl", "Qwen2-VL (HF Qwen2VLForConditionalGeneration)")
class Qwen2VLAdapter(QwenVLAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    processor_class = "Qwen2VLProcessor"
    fps_in_inputs = False


@MODELS.register("qwen2_5_vl", "Qwen2.5-VL (HF Qwen2_5_VLForConditionalGeneration)")
class Qwen2_5_VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    processor_class = "Qwen2_5_VLProcessor"


@MODELS.register("qwen3_vl", "Qwen3-VL (HF Qwen3VLForConditionalGeneration), timestamps + deepstack")
class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    processor_class = "Qwen3VLProcessor"
    video_processor_class = "Qwen3VLVideoProcessor"
    # its repositories ship a video config whose size is a budget for the whole clip
    # (frames x H x W), used as is; the reference's per-frame cap applies on top (without it,
    # transformers 5.24 lets 8 frames of 1920 x 1080 cost 2.8x the reference's tokens)
    video_pixels_default = None
    clip_size = True

    processing_changes: ClassVar[dict[str, str]] = {
        "video_budget": "frames get the reference's per-frame pixel cap since 293a870 "
        "(before, no cap was passed and transformers 5.24 left them uncapped)",
    }

    def processing_before(self) -> dict[str, Any]:
        """A folder that records no ``video_budget`` was started before the per-frame cap
        (293a870): its frames were processed with the same size bounds, uncapped."""
        budget = {**self.processing()["video_budget"], "cap_pixels_per_frame": False}
        return {"video_budget": budget}

    def process(self, text: str, frames: np.ndarray) -> dict[str, Any]:
        """As the base class; fewer frames than a temporal patch (one) are padded with
        copies of the last frame, as Qwen2/2.5-VL's processor pads them (Qwen3-VL's
        refuses them: ``t:1 must be larger than temporal_factor:2``). Under per-frame
        ``video_pixels`` an odd count is padded to even here, as qwen-vl-utils pads it
        before sharing its budget (the processor would pad the same copy after resizing,
        but sizes an odd clip by a rounded frame count)."""
        patch = int(self.processor.video_processor.temporal_patch_size)
        pad, timed = patch - len(frames), None
        if pad <= 0 and self.video_pixels is not None:
            pad, timed = -len(frames) % patch, len(frames)
        if pad > 0:
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        return super().process(text, frames, timed=timed)

    def language_model(self) -> LanguageModel:
        """As the base class, with the deepstack features recorded as they are added, so
        the engine replays them exactly (``LanguageModel.record_additions``)."""
        return dataclasses.replace(super().language_model(), record_additions=self._record_deepstack)

    @contextmanager
    def _record_deepstack(self) -> Iterator[dict[int, torch.Tensor]]:
        """``{layer: (1, N, d)}``: the features ``_deepstack_process`` adds after decoder
        layers 0, 1, ... (one call per layer, in order), zero outside the visual tokens."""
        text = self.model.model.language_model
        added: dict[int, torch.Tensor] = {}
        real = text._deepstack_process

        def recording(hidden: torch.Tensor, mask: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            v = torch.zeros_like(hidden)
            v[mask.to(hidden.device)] = embeds.to(hidden.device, hidden.dtype)
            added[len(added)] = v.detach()
            return real(hidden, mask, embeds)

        own = vars(text).get("_deepstack_process")  # an instance override, kept
        text._deepstack_process = recording
        try:
            yield added
        finally:
            if own is None:
                del text._deepstack_process  # the class's method again
            else:
                text._deepstack_process = own

    def _frame_spans(self, ids: list[int], runs: list[Span]) -> tuple[Span, ...]:
        """``timestamp <|vision_start|> grid <|vision_end|>`` per temporal patch.

        A patch's span runs from the end of the previous one; the first starts at the token
        holding the first character of the processor's first timestamp text (from the
        tokenizer's offsets, as it may share that token with the text before it), and that
        text must end where the patch's ``<|vision_start|>`` begins.
        """
        cfg = self.model.config
        vs, ve = cfg.vision_start_token_id, cfg.vision_end_token_id
        for i, r in enumerate(runs):
            if ids[r.start - 1] != vs or r.end >= len(ids) or ids[r.end] != ve:
                raise PromptError(
                    f"temporal patch {i}: its video tokens are not wrapped in "
                    "<|vision_start|> .. <|vision_end|>"
                )
        e = self._replacement()
        enc = self.tokenizer(e.text, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids:
            raise PromptError("re-tokenising the expanded prompt does not reproduce the processor's ids")
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        stamp = e.replacement.find(self.tokenizer.convert_ids_to_tokens(vs))
        marker = runs[0].start - 1  # the first patch's <|vision_start|>
        first = _token_at(offsets, e.start) if stamp > 0 else marker
        if first >= marker or offsets[marker][0] != e.start + stamp:
            raise PromptError("the first temporal patch's timestamp text was not found before its tokens")
        starts = [first] + [r.end + 1 for r in runs[:-1]]
        return tuple(Span(s, r.end + 1) for s, r in zip(starts, runs, strict=True))
