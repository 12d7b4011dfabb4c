"""``TokenLayout``: where each token group of a prepared input sits, and group resolution.

A *group* is a name that a layout resolves to sorted token positions. The grammar:

=========================  ==========================================================
``system``                 the system prompt (with the BOS token)
``video``                  every visual token
``frame:T``                the tokens of frame group ``T`` (a temporal patch for models
                           that fuse frames, see ``frames_per_group``)
``frames:A-B``             frame groups ``A..B`` inclusive
``frames:<T``              every frame group before ``T``
``question``               the question with its options (``Question: ... (D) text``)
``question_no_options``    the raw question text (alias ``non_option_question``)
``options``                every option
``option:X``               option ``X`` (a letter) or ``option:i`` (an index)
``true_option``            the correct option's tokens
``false_options``          the other options' tokens
``last``                   the final position, whose next-token distribution is the answer
``response``               the model's response fed back after the prompt, *last* included
                           (open-ended, verb-anchored inputs; empty otherwise)
``non_last_response``      the response before *last*, less the tokens kept open right
                           before it (the paper's "non-last response")
``template``               every position in no other group (role tags, instructions)
``all``                    every position
``G1+G2``                  the union of groups
=========================  ==========================================================
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import PlanError

# how a frame group's tokens run over its (H, W) grid: row-major, or column-major (transposed)
GRID_ORDERS = ("row", "column")


@dataclass(frozen=True)
class Span:
    """Half-open token range ``[start, end)``."""

    start: int
    end: int

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def positions(self) -> np.ndarray:
        return np.arange(self.start, self.end, dtype=np.int64)


@dataclass(frozen=True)
class TokenLayout:
    """Token groups of one prepared input of ``length`` tokens.

    ``frame_grids`` is the ``(H, W)`` token grid of each frame group; its tokens are laid
    out over it row-major, or column-major when ``grid_order`` is ``"column"`` (token ``k``
    at row ``k % H``, column ``k // H``: Mini-InternVL checkpoints with ``ps_version`` v1,
    whose pixel shuffle leaves the grid transposed). ``frames_per_group`` says how many
    input frames one frame group fuses (2 for Qwen-VL temporal patches, 1 otherwise). Frame spans may hold
    a few non-grid tokens (timestamps, separators) for families that interleave them;
    ``frame_token_offsets`` then says where the grid starts inside each span.
    """

    length: int
    system: Span
    video: Span
    frames: tuple[Span, ...]
    frame_grids: tuple[tuple[int, int], ...]
    question: Span
    question_no_options: Span
    options: tuple[Span, ...]
    answer: int | None
    frames_per_group: int = 1
    frame_token_offsets: tuple[int, ...] = ()
    response: Span = Span(0, 0)
    non_last_response: Span = Span(0, 0)
    grid_order: str = "row"

    def __post_init__(self) -> None:
        if self.grid_order not in GRID_ORDERS:
            raise ValueError(f"grid_order must be one of {GRID_ORDERS}, not {self.grid_order!r}")

    @property
    def last(self) -> int:
        return self.length - 1

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def true_option(self) -> Span:
        if self.answer is None:
            raise PlanError("this sample has no ground-truth option")
        return self.options[self.answer]

    @property
    def false_options(self) -> tuple[Span, ...]:
        if self.answer is None:  # every option would be "false": refused as true_option is
            raise PlanError("this sample has no ground-truth option, so no false options")
        return tuple(s for i, s in enumerate(self.options) if i != self.answer)

    # ------------------------------------------------------------------ resolution
    def resolve(self, group: str) -> np.ndarray:
        """Sorted unique positions of ``group``; an empty group is a ``PlanError``."""
        pos = self._resolve(group.strip())
        if pos.size == 0:
            raise PlanError(f"token group {group!r} is empty for this input")
        return pos

    def _resolve(self, group: str) -> np.ndarray:
        if "+" in group:
            parts = [self._resolve(g.strip()) for g in group.split("+")]
            return np.unique(np.concatenate(parts))
        simple: dict[str, Any] = {
            "system": lambda: self.system.positions(),
            "video": lambda: self.video.positions(),
            "question": lambda: self.question.positions(),
            "question_no_options": lambda: self.question_no_options.positions(),
            "non_option_question": lambda: self.question_no_options.positions(),
            "options": lambda: _union(self.options),
            "true_option": lambda: self.true_option.positions(),
            "false_options": lambda: _union(self.false_options),
            "last": lambda: np.array([self.last], dtype=np.int64),
            "response": lambda: self.response.positions(),
            "non_last_response": lambda: self.non_last_response.positions(),
            "all": lambda: np.arange(self.length, dtype=np.int64),
            "template": self._template,
        }
        if group in simple:
            return simple[group]()
        m = re.fullmatch(r"frame:([0-9]+)", group)
        if m:
            return self._frame_span(int(m.group(1))).positions()
        m = re.fullmatch(r"frames:([0-9]+)-([0-9]+)", group)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise PlanError(f"group {group!r} is empty: {a} > {b} (write frames:{b}-{a})")
            return _union([self._frame_span(t) for t in range(a, b + 1)])
        m = re.fullmatch(r"frames:<([0-9]+)", group)
        if m:
            return _union([self._frame_span(t) for t in range(int(m.group(1)))])
        m = re.fullmatch(r"option:([A-Za-z]|[0-9]+)", group)
        if m:
            key = m.group(1)
            idx = int(key) if key.isdigit() else string.ascii_uppercase.index(key.upper())
            if idx >= len(self.options):
                raise PlanError(f"group {group!r}: the sample has {len(self.options)} options")
            return self.options[idx].positions()
        raise PlanError(
            f"unknown token group {group!r}; use system, video, frame:T, frames:A-B, frames:<T, "
            "question, question_no_options, options, option:X, true_option, false_options, "
            "last, response, non_last_response, template, all (or a '+' union)"
        )

    def _frame_span(self, t: int) -> Span:
        if not 0 <= t < len(self.frames):
            raise PlanError(f"frame {t} does not exist; this input has {len(self.frames)} frames")
        return self.frames[t]

    def _template(self) -> np.ndarray:
        taken = np.zeros(self.length, dtype=bool)
        for span in (self.system, self.video, self.question, *self.options, self.response):
            taken[span.start : span.end] = True
        taken[self.last] = True
        return np.flatnonzero(~taken).astype(np.int64)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("response", "non_last_response"):  # only open-ended inputs have them
            if not len(getattr(self, key)):
                d.pop(key)
        if self.grid_order == "row":  # only Mini-InternVL v1 lays its grids out otherwise
            d.pop("grid_order")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        span = lambda x: Span(**x)  # noqa: E731
        return cls(
            length=d["length"],
            system=span(d["system"]),
            video=span(d["video"]),
            frames=tuple(span(x) for x in d["frames"]),
            frame_grids=tuple(tuple(g) for g in d["frame_grids"]),
            question=span(d["question"]),
            question_no_options=span(d["question_no_options"]),
            options=tuple(span(x) for x in d["options"]),
            answer=d["answer"],
            frames_per_group=d.get("frames_per_group", 1),
            frame_token_offsets=tuple(d.get("frame_token_offsets", ())),
            response=span(d["response"]) if "response" in d else Span(0, 0),
            non_last_response=span(d["non_last_response"]) if "non_last_response" in d else Span(0, 0),
            grid_order=d.get("grid_order", "row"),
        )


_NAMES = frozenset(
    {
        "system",
        "video",
        "question",
        "question_no_options",
        "non_option_question",
        "options",
        "true_option",
        "false_options",
        "last",
        "response",
        "non_last_response",
        "all",
        "template",
    }
)


def check_group(group: str) -> str:
    """Check the grammar of ``group`` without a layout; returns it stripped.

    Raises a one-line :class:`PlanError` naming the bad part for anything
    :meth:`TokenLayout.resolve` could never resolve (an unknown name, a malformed or empty
    frame range, an empty ``+`` term), so a typo stops a run before its first sample. What
    depends on the input (frame 9 of an 8-frame video, option E of four) is left to
    :meth:`TokenLayout.resolve`.

        >>> check_group("video + frame:3")
        'video + frame:3'
        >>> check_group("frames:5-2")
        Traceback (most recent call last):
        ...
        vlmflow.errors.PlanError: group 'frames:5-2' is empty: 5 > 2 (write frames:2-5)
    """
    text = group.strip()
    for part in text.split("+"):
        part = part.strip()
        if part in _NAMES or re.fullmatch(r"frame:[0-9]+|option:(?:[A-Za-z]|[0-9]+)", part):
            continue
        m = re.fullmatch(r"frames:([0-9]+)-([0-9]+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise PlanError(f"group {part!r} is empty: {a} > {b} (write frames:{b}-{a})")
            continue
        m = re.fullmatch(r"frames:<([0-9]+)", part)
        if m:
            if int(m.group(1)) == 0:
                raise PlanError(f"group {part!r} is empty: no frame comes before frame 0")
            continue
        where = f" in {group!r}" if part != group else ""
        raise PlanError(
            f"unknown token group {part!r}{where}; use system, video, frame:T, frames:A-B, frames:<T, "
            "question, question_no_options, options, option:X, true_option, false_options, "
            "last, response, non_last_response, template, all (or a '+' union)"
        )
    return text


def _union(spans: Any) -> np.ndarray:
    spans = list(spans)
    if not spans:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([s.positions() for s in spans]))
