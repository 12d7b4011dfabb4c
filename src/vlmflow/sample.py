"""``Sample``: one VideoQA item as every loader produces and every adapter consumes."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cuts import is_int
from .errors import DataError

LETTERS = string.ascii_uppercase


def check_frames(frames: Any, sample_id: str) -> np.ndarray:
    """``frames`` as the ``(T, H, W, 3)`` uint8 RGB array every adapter takes (``T >= 1``),
    else a :class:`~vlmflow.errors.DataError` naming the sample and what is wrong."""
    try:
        arr = np.asarray(frames)
    except (TypeError, ValueError) as exc:
        raise DataError(f"sample {sample_id!r}: frames are not an array ({exc})") from None
    where = f"sample {sample_id!r}: frames must be a (T, H, W, 3) uint8 RGB array"
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"{where}, got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise DataError(f"{where} with at least one frame of at least 1x1 pixels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        hint = ""
        if np.issubdtype(arr.dtype, np.floating):
            hint = (
                " (float frames are ambiguous: convert 0..1 floats with (frames * 255).round()"
                ".astype(np.uint8), 0..255 floats with frames.round().astype(np.uint8))"
            )
        raise DataError(f"{where}, got dtype {arr.dtype}{hint}")
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class Sample:
    """One VideoQA item.

    Either ``frames`` (decoded, ``(T, H, W, 3)`` uint8 RGB) or ``video`` (a path to a video
    file or a folder of frame images) is set; loaders leave decoding to
    :func:`vlmflow.data.video.load_frames` so it happens once, lazily, and cached.

    ``options`` are the candidate texts without letters (at most 26, lettered A-Z; more,
    or a string instead of a sequence of texts, raise :class:`~vlmflow.errors.DataError`);
    ``answer`` indexes them (an integer ``0..len(options)-1``, numpy's kept as ``int``, or
    ``None``; anything else is a ``DataError`` naming the sample). An open-ended item has
    no options and keeps its reference text in ``answer_text``.
    ``bound`` is an optional ``(start_s, end_s)`` window of the video to sample from.
    ``error`` is set on an annotation item a loader could not read (its reason, naming the
    file and item): the run records such a sample as failed without preparing it.
    """

    id: str
    question: str
    options: tuple[str, ...] = ()
    answer: int | None = None
    task: str = "default"
    source: str = ""
    video: str | None = None
    frames: np.ndarray | None = None
    bound: tuple[float, float] | None = None
    answer_text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.options, (str, bytes)):  # would be read as one option per character
            raise DataError(
                f"sample {self.id!r}: options must be a tuple of option texts, got the string "
                f"{self.options!r}"
            )
        if len(self.options) > len(LETTERS):
            raise DataError(
                f"sample {self.id!r} has {len(self.options)} options; at most {len(LETTERS)} "
                f"can be lettered (A-Z)"
            )
        answer = self.answer
        if answer is not None:
            # an index of the options: -1 read as option D by true_option but 'Z' as the
            # letter; True as 1; 1.0 and 5 failed later as a raw TypeError / IndexError
            if not is_int(answer):  # numpy's too; a bool is not an index
                raise DataError(
                    f"sample {self.id!r}: answer must be an option index (an integer) or None, got {answer!r}"
                )
            if not 0 <= answer < len(self.options):
                raise DataError(
                    f"sample {self.id!r}: answer index {answer} outside the {len(self.options)} "
                    f"options (0..{len(self.options) - 1})"
                    if self.options
                    else f"sample {self.id!r}: answer index {answer} given, but the sample has no options"
                )
            object.__setattr__(self, "answer", int(answer))  # numpy integers (pandas loaders)

    def __repr__(self) -> str:
        """One line: the fields as given, ``frames`` summarised as its shape and dtype (not
        the pixels), ``meta`` by its keys."""
        parts = [f"id={self.id!r}", f"question={self.question!r}"]
        if self.options:
            parts.append(f"options={self.options!r}")
        parts += [f"answer={self.answer!r}", f"task={self.task!r}"]
        if self.source:
            parts.append(f"source={self.source!r}")
        if self.video is not None:
            parts.append(f"video={self.video!r}")
        if self.frames is not None:
            shape = getattr(self.frames, "shape", None)
            dtype = getattr(self.frames, "dtype", type(self.frames).__name__)
            parts.append(f"frames=<{'x'.join(map(str, shape)) if shape else '?'} {dtype}>")
        if self.bound is not None:
            parts.append(f"bound={self.bound!r}")
        if self.answer_text is not None:
            parts.append(f"answer_text={self.answer_text!r}")
        if self.meta:
            parts.append(f"meta=<keys {sorted(self.meta)}>")
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        return f"Sample({', '.join(parts)})"

    @property
    def is_multiple_choice(self) -> bool:
        return len(self.options) > 0

    @property
    def letters(self) -> tuple[str, ...]:
        """Option letters ``("A", "B", ...)``, one per option."""
        return tuple(LETTERS[i] for i in range(len(self.options)))

    @property
    def answer_letter(self) -> str | None:
        return None if self.answer is None else LETTERS[self.answer]

    def with_frames(self, frames: np.ndarray) -> Sample:
        """A copy of this sample holding decoded ``frames`` ``(T, H, W, 3)`` uint8."""
        from dataclasses import replace

        return replace(self, frames=frames)
