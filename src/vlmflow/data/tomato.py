"""TOMATO (``tomato:/data/TOMATO``), read from its published layout (HF ``yale-nlp/TOMATO``).

``{root}/jsons/<file>.json`` is a JSON *dict keyed by id*; each value has ``question``,
``options`` (plain option texts), ``answer`` (an int index into ``options``), ``key`` (the
video stem) and ``demonstration_type`` (the video's subfolder). The video of an item is
``{root}/videos/{demonstration_type}/{key}.mp4``. The six files map to the task names the
paper's code uses, so its alphabetical task ids apply: 0 Count, 1 Direction, 2 Rotation,
3 ShapeTrend, 4 VelocityFrequency, 5 VisualCues. Any other ``jsons/*.json`` becomes a task
named after its file stem. Frames: the paper's 8 segment midpoints over the whole video.

The paper's TOMATO loader built only the lettered question and answer, not the non-option
question or the false options; here options stay plain texts with an answer index, so the
prompt builder locates every option-level group as it does for TVBench.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import Sample
from ._common import answer_by_index, load_file, option_texts, parse_items, read_json, require, root_of
from .registry import DATASETS, published_tasks

# annotation file stem -> task name (the paper's code: tasks/eval/tomato/__init__.py)
TASKS: dict[str, str] = {
    "count": "Count",
    "direction": "Direction",
    "rotation": "Rotation",
    "shape&trend": "ShapeTrend",
    "velocity&frequency": "VelocityFrequency",
    "visual_cues": "VisualCues",
}

published_tasks("tomato", TASKS.values())


@DATASETS.register("tomato", help="TOMATO from its published jsons/ + videos/<demonstration_type>/ layout")
def load_tomato(arg: str) -> list[Sample]:
    """TOMATO from its published jsons/ + videos/<demonstration_type>/ layout."""
    root = root_of(arg, "tomato", "/data/TOMATO")
    json_dir = root / "jsons"
    if not json_dir.is_dir():
        raise DataError(f"TOMATO root {root} has no jsons/ folder of annotations")
    files = {TASKS.get(f.stem, f.stem): f for f in sorted(json_dir.glob("*.json"))}
    if not files:
        raise DataError(f"TOMATO folder {json_dir} holds no .json annotation files")
    out: list[Sample] = []
    for task in sorted(files):
        out.extend(load_file(files[task], task, "tomato", _load_task, task, files[task], root / "videos"))
    return out


def _load_task(task: str, file: Path, video_root: Path) -> list[Sample]:
    items = read_json(file, "TOMATO")
    if not isinstance(items, dict):
        raise DataError(f"{file}: expected a JSON object keyed by id, got {type(items).__name__}")
    if not items:
        raise DataError(f"{file}: task {task!r} has no items")
    index = {key: i for i, key in enumerate(items)}

    def parse(key: str, item: Any) -> Sample:
        i = index[key]
        where = f"{file} item {key!r}"
        require(item, ("question", "options", "answer", "key", "demonstration_type"), where)
        options = option_texts(item["options"], "options", where)
        answer = answer_by_index(item["answer"], options, where)
        demo, stem = str(item["demonstration_type"]), str(item["key"])
        meta = {k: v for k, v in item.items() if k not in _KNOWN}
        meta.update({"json": str(file), "index": i, "demonstration_type": demo, "key": stem})
        return Sample(
            id=str(key),
            question=str(item["question"]),
            options=options,
            answer=answer,
            task=task,
            source="tomato",
            video=str(video_root / demo / f"{stem}.mp4"),
            meta=meta,
        )

    return parse_items(file, items.items(), parse, source="tomato", task=task, id_of=lambda key, item: key)


_KNOWN = {"question", "options", "answer", "key", "demonstration_type"}
