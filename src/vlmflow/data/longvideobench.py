"""LongVideoBench (``longvideobench:/data/LongVideoBench``), read from its published layout.

The annotations are ``{root}/lvb_val.json`` (HF ``longvideobench/LongVideoBench``), a JSON
list whose items have ``question``, ``candidates`` (plain option texts),
``correct_choice`` (an int index), ``video_path`` (relative to ``{root}/videos/``),
``duration`` (seconds), ``id`` and ``question_category`` (the task); subtitle fields and
any others go to ``meta``. The test split ships without answers and is not read.

Task ids are the alphabetical order of ``question_category``: with the 17 published
categories that is 0 E2O, 1 E3E, 2 O2E, 3 O3O, 4 S2A, 5 S2E, 6 S2O, 7 SAA, 8 SOS, 9 SSS,
10 T2A, 11 T2E, 12 T2O, 13 T3E, 14 T3O, 15 TAA, 16 TOS (the paper's plots use 02_O2E,
03_O3O and 08_SOS).

Frames: the paper sampled LongVideoBench with the benchmark's own start-aligned
``load_video(duration, 8)``, not segment midpoints. Each Sample records that in
``meta["frame_policy"] = "lvb"`` (the default for these samples; a policy the user chooses
wins) and carries ``bound = (0, duration)``: the reference
counts frames from the annotation's ``duration`` (``int(duration * fps)``), and the ``lvb``
policy of :func:`~vlmflow.data.video.sample_indices` reads it from the bound (for the
other policies it is the whole video whenever the duration reaches the file's end). The paper's
loader built only
the lettered question and answer, not the non-option question or the false options; here
options stay plain texts, so the prompt builder locates every option-level group.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..sample import Sample
from ._common import answer_by_index, field_of, option_texts, parse_items, read_json, require, root_of
from .registry import DATASETS, published_tasks

ANNOTATIONS = "lvb_val.json"
TASKS = tuple("E2O E3E O2E O3O S2A S2E S2O SAA SOS SSS T2A T2E T2O T3E T3O TAA TOS".split())
"""LongVideoBench's 17 published ``question_category`` values, which the task ids number."""
published_tasks("longvideobench", TASKS)
FRAME_POLICY = "lvb"
"""The frame-sampling policy the paper used for LongVideoBench."""

_KNOWN = {"question", "candidates", "correct_choice", "video_path", "duration", "id", "question_category"}


@DATASETS.register(
    "longvideobench", help="LongVideoBench validation set from lvb_val.json + videos/ (start-aligned frames)"
)
def load_longvideobench(arg: str) -> list[Sample]:
    """LongVideoBench validation set from lvb_val.json + videos/ (start-aligned frames)."""
    root = root_of(arg, "longvideobench", "/data/LongVideoBench")
    file = root / ANNOTATIONS
    items = read_json(file, "LongVideoBench")
    if not isinstance(items, list):
        raise DataError(f"{file}: expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise DataError(f"{file}: the annotation list has no items")

    def parse(i: int, item: Any) -> Sample:
        where = f"{file} item {i}"
        if isinstance(item, dict) and item.get("id") is not None:
            where += f" (id {item['id']})"
        require(item, ("question", "candidates", "correct_choice", "video_path", "duration"), where)
        require(item, ("question_category",), where)
        options = option_texts(item["candidates"], "candidates", where)
        answer = answer_by_index(item["correct_choice"], options, where)
        try:
            duration = float(item["duration"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: 'duration' must be a number of seconds") from e
        if duration <= 0:
            raise DataError(f"{where}: 'duration' must be positive, got {duration}")
        meta = {k: v for k, v in item.items() if k not in _KNOWN}
        meta.update(
            {
                "json": str(file),
                "index": i,
                "duration": duration,
                "video_path": str(item["video_path"]),
                "frame_policy": FRAME_POLICY,
            }
        )
        return Sample(
            id=str(_id_of(i, item)),
            question=str(item["question"]),
            options=options,
            answer=answer,
            task=str(item["question_category"]),
            source="longvideobench",
            video=str(root / "videos" / str(item["video_path"])),
            bound=(0.0, duration),
            meta=meta,
        )

    return parse_items(
        file,
        enumerate(items),
        parse,
        source="longvideobench",
        task=field_of("question_category"),
        id_of=_id_of,
    )


def _id_of(i: int, item: Any) -> Any:
    """An item's ``id``, else ``lvb-<index>``."""
    return item.get("id", f"lvb-{i:05d}") if isinstance(item, dict) else f"lvb-{i:05d}"
