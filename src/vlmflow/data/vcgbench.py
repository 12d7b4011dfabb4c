"""VCGBench, the Video-ChatGPT benchmark (``vcgbench:/data/VCGBench``): open-ended questions.

``{root}/Benchmarking_QA/{generic_qa,temporal_qa,consistency_qa}.json`` are JSON lists.
Generic and temporal items have ``Q``, ``A`` and ``video_name``; consistency items ask
the same thing twice, as ``Q1`` and ``Q2``, with one ``A``. The video is
``{root}/Test_Videos/{video_name}.mp4`` (or ``.mkv`` when that is the one present).

Samples are open-ended: no options, ``answer`` is ``None`` and ``answer_text`` holds the
reference answer ``A``; the question is the raw ``Q`` (the paper adds no "Question:"
prefix). A consistency item gives one Sample whose question is ``Q1``, with ``Q2`` in
``meta["question_2"]``, so a task has one Sample per published item. Tasks are the file
stems, so the paper's ids are 0 consistency_qa, 1 generic_qa, 2 temporal_qa (the paper's
open-ended analysis uses 2). Frames: the paper's 8 segment midpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import Sample
from ._common import first_existing, load_file, parse_items, read_json, require, root_of
from .registry import DATASETS, published_tasks

TASKS = ("consistency_qa", "generic_qa", "temporal_qa")
VIDEO_EXTENSIONS = (".mp4", ".mkv")
published_tasks("vcgbench", TASKS)


@DATASETS.register(
    "vcgbench", help="VCGBench (Video-ChatGPT) open-ended QA from Benchmarking_QA/ + Test_Videos/"
)
def load_vcgbench(arg: str) -> list[Sample]:
    """VCGBench (Video-ChatGPT) open-ended QA from Benchmarking_QA/ + Test_Videos/."""
    root = root_of(arg, "vcgbench", "/data/VCGBench")
    qa_dir = root / "Benchmarking_QA"
    if not qa_dir.is_dir():
        raise DataError(f"VCGBench root {root} has no Benchmarking_QA/ folder of annotations")
    files = [qa_dir / f"{task}.json" for task in TASKS if (qa_dir / f"{task}.json").is_file()]
    if not files:
        raise DataError(f"VCGBench folder {qa_dir} holds none of {', '.join(t + '.json' for t in TASKS)}")
    out: list[Sample] = []
    for file in files:
        out.extend(load_file(file, file.stem, "vcgbench", _load_task, file, root / "Test_Videos"))
    return out


def _video(video_dir: Path, name: str) -> Path:
    """``Test_Videos/<name>.mp4`` or ``.mkv``; a name that already has its extension is kept."""
    if Path(name).suffix.lower() in VIDEO_EXTENSIONS and (video_dir / name).is_file():
        return video_dir / name
    return first_existing(video_dir, name, VIDEO_EXTENSIONS)


def _load_task(file: Path, video_dir: Path) -> list[Sample]:
    task = file.stem
    items = read_json(file, "VCGBench")
    if not isinstance(items, list):
        raise DataError(f"{file}: expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise DataError(f"{file}: task {task!r} has no items")
    questions = ("Q1", "Q2") if task == "consistency_qa" else ("Q",)

    def parse(i: int, item: Any) -> Sample:
        where = f"{file} item {i}"
        require(item, (*questions, "A", "video_name"), where)
        name = str(item["video_name"])
        meta = {k: v for k, v in item.items() if k not in {*questions, "A"}}
        meta.update({"json": str(file), "index": i, "video_name": name})
        if task == "consistency_qa":
            meta["question_2"] = str(item["Q2"])
        return Sample(
            id=f"{task}-{i:05d}",
            question=str(item[questions[0]]),
            task=task,
            source="vcgbench",
            video=str(_video(video_dir, name)),
            answer_text=str(item["A"]),
            meta=meta,
        )

    return parse_items(
        file, enumerate(items), parse, source="vcgbench", task=task, id_of=lambda i, item: f"{task}-{i:05d}"
    )
