"""Frame bookkeeping shared by adapters: where each frame's tokens sit in the prepared input.

Two shapes of video placeholder expansion occur in the HF VideoLLM processors:

- *one repeated token* (LLaVA-NeXT-Video, LLaVA-OneVision, Video-LLaVA): the placeholder
  becomes ``T * n`` copies of the video token (plus family extras: a per-frame CLS token, a
  trailing newline). Frames are consecutive blocks of a per-frame count the adapter derives
  from the processor's and model's own sizes; :func:`stacked_frames` checks the run length
  against that count rather than dividing the run evenly.
- *text between frames* (InternVL's ``FrameN: <img>...</img>`` lines, VideoLLaMA3's
  ``Time t s:`` stamps joined by commas): :class:`ReplacementAdapter` asks the processor for
  its own replacement string (``return_text_replacement_offsets``), splits it at the
  processor's frame separator and maps each frame's characters to tokens through the
  tokenizer's offsets. Per-frame token counts come from that string, so frames may differ.

A frame span holds everything that belongs to one frame: its separator from the previous
frame (the paper's VideoLLaMA3 convention, REFERENCE_NOTES §3.3), its label or timestamp
text, tags and its visual tokens. ``VideoTokens.grid_offsets`` says where the ``h x w`` grid
starts inside each span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import PromptError
from ..layout import Span
from ..prompt import PromptText
from .base import Adapter, VideoTokens
from .processors import frames_as_given

Grid = tuple[int, int]


def stacked_frames(video: Span, num_frames: int, grid: Grid, *, lead: int = 0, trail: int = 0) -> VideoTokens:
    """Frames of a single run of video tokens: frame ``t`` is ``lead`` extra tokens (e.g. CLS)
    then its ``h x w`` grid, the frames back to back, then ``trail`` tokens that belong to no
    frame (e.g. OneVision's newline). The run must have exactly that many tokens."""
    h, w = grid
    n = lead + h * w
    if len(video) != num_frames * n + trail:
        raise PromptError(
            f"{len(video)} video tokens for {num_frames} frames of {lead}+{h}x{w} tokens plus {trail}; "
            "the processor and the model disagree on tokens per frame"
        )
    frames = tuple(Span(video.start + t * n, video.start + (t + 1) * n) for t in range(num_frames))
    offsets = (lead,) * num_frames if lead else ()
    return VideoTokens(video, frames, (grid,) * num_frames, grid_offsets=offsets)


@dataclass(frozen=True)
class Expansion:
    """The processor's replacement of the video placeholder in ``prompt``.

    ``start``/``end``: the placeholder's character range in ``prompt``; ``replacement``: the
    text the processor put there before tokenising.
    """

    prompt: str
    start: int
    end: int
    replacement: str

    @property
    def text(self) -> str:
        """The prompt exactly as the processor tokenised it."""
        return self.prompt[: self.start] + self.replacement + self.prompt[self.end :]


class ReplacementAdapter(Adapter):
    """Base of families whose processor writes text between frames (labels, timestamps, tags).

    ``process`` keeps the processor's own replacement string for the prompt it just processed
    (one prompt at a time; ``prepare`` calls ``process``, ``expand_placeholder`` and
    ``video_tokens`` in that order). Subclasses name the frame separator, the visual token id
    and each frame's grid.
    """

    frame_separator: ClassVar[str] = "\n"

    _expansion: Expansion | None = None

    # ------------------------------------------------------------------ family hooks
    def processor_kwargs(self, frames: np.ndarray) -> dict[str, Any]:
        """Extra keyword arguments of the processor call (frame metadata, options)."""
        return {}

    @property
    def media_token_id(self) -> int:
        """The id of the tokens the model replaces with visual features."""
        raise NotImplementedError

    def frame_grids(self, inputs: dict[str, Any], pieces: Sequence[str]) -> list[tuple[Grid, int]]:
        """Per frame: its ``(h, w)`` grid and how many visual tokens the processor wrote for it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ adapter hooks
    def process(self, text: str, frames: np.ndarray) -> dict[str, Any]:
        """The real processor on one prompt and one video, the frames used as given (never
        sampled again: :func:`~.processors.frames_as_given`), its expansion kept."""
        out = dict(
            self.processor(
                text=text,
                videos=[list(frames)],
                return_tensors="pt",
                return_text_replacement_offsets=True,
                **frames_as_given(self.processor),
                **self.processor_kwargs(frames),
            )
        )
        batches = out.pop("text_replacement_offsets", None)
        reps = [r for r in (batches[0] if batches else []) if r["type"] == "video"]
        if len(reps) != 1:
            raise PromptError(
                f"{self.model_id or self.family}: expected the processor to expand one video "
                f"placeholder, it reported {len(reps)}"
            )
        start, end = reps[0]["span"]
        self._expansion = Expansion(text, int(start), int(end), reps[0]["replacement"])
        return out

    def expansion(self, prompt: str | None = None) -> Expansion:
        """The processor's expansion of the last processed prompt (``prompt`` checks which)."""
        e = self._expansion
        if e is None or (prompt is not None and e.prompt != prompt):
            raise PromptError(
                f"{self.model_id or self.family}: no processor expansion recorded for this prompt; "
                "call process() on it first"
            )
        return e

    @property
    def video_placeholder(self) -> str:
        return self.processor.video_token

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        e = self.expansion(prompt.text)
        if e.start != prompt.placeholder_at:
            raise PromptError(
                f"{self.model_id or self.family}: the processor expanded the placeholder at character "
                f"{e.start}, the prompt has it at {prompt.placeholder_at}"
            )
        return e.text, len(e.replacement) - (e.end - e.start)

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        e = self.expansion()
        sep = self.frame_separator
        pieces = e.replacement.split(sep)
        grids = self.frame_grids(inputs, pieces)
        if len(grids) != len(pieces):
            raise PromptError(
                f"the processor wrote {len(pieces)} frame pieces separated by {sep!r} for {len(grids)} frames"
            )
        enc = self.tokenizer(e.text, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        ids = input_ids[0].tolist()
        if list(enc["input_ids"]) != ids:
            raise PromptError("re-tokenising the expanded prompt does not reproduce the processor's ids")

        # each frame starts at its separator (the first frame at the replacement's start)
        starts, c = [], e.start
        for t, piece in enumerate(pieces):
            starts.append(c - (len(sep) if t else 0))
            c += len(piece) + len(sep)
        bounds = [_token_at(offsets, s) for s in starts]
        bounds.append(_token_at(offsets, e.start + len(e.replacement) - 1) + 1)

        media = self.media_token_id
        frames, offs = [], []
        for t, ((h, w), count) in enumerate(grids):
            span = Span(bounds[t], bounds[t + 1])
            pos = [i for i in range(span.start, span.end) if ids[i] == media]
            if len(pos) != count or (pos and pos[-1] - pos[0] + 1 != count):
                raise PromptError(
                    f"frame {t}: expected one run of {count} visual tokens in its span {span}, "
                    f"found {len(pos)}"
                )
            if h * w != count:
                raise PromptError(f"frame {t}: a {h}x{w} grid for {count} visual tokens")
            frames.append(span)
            offs.append(pos[0] - span.start if pos else 0)
        total = sum(1 for i in ids if i == media)
        if total != sum(n for _, n in grids):
            raise PromptError(f"{total} visual tokens in the input, {sum(n for _, n in grids)} in the frames")
        video = Span(bounds[0], bounds[-1])
        return VideoTokens(video, tuple(frames), tuple(g for g, _ in grids), grid_offsets=tuple(offs))


def _token_at(offsets: list[tuple[int, int]], c: int) -> int:
    """The token holding character ``c``, or the first one after it where no token covers it
    (a trimmed space); text-less special tokens are skipped."""
    for i, (a, b) in enumerate(offsets):
        if b > a and b > c:
            return i
    raise PromptError(f"no token covers character {c} of the expanded prompt")
