"""TVBench (``tvbench:/data/TVBench``), read from its published layout.

``{root}/json/<file>.json`` is a JSON list of ``{video, question, candidates, answer}``
(``answer`` is the *text* of the correct candidate; ``start``/``end`` seconds for the two
bounded tasks, ``null`` meaning no bound) and the videos live at
``{root}/video/<task_dir>/<video>``. An empty task file is an error. Task names are
TVBench's own ("Action Antonym", ...); the paper's task ids number TVBench's 10 tasks
alphabetically (0 Action Antonym ... 9 Unexpected Action) whichever are on disk. Any
other ``json/*.json`` is loaded as a task named after its file stem (numbered after them). A copy written by
:func:`vlmflow.data.synthetic.write_tvbench` also has a ``vlmflow.json`` at its root that
names each file's task (so its ``moving_direction.json`` stays the task
"moving_direction" rather than becoming TVBench's "Moving Direction"); items may carry an
``id``, else ids are ``<file stem>-<index>``.
Videos are not opened here; decoding happens later, once, in ``load_frames``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import Sample
from ._common import answer_by_text, bound_of, load_file, option_texts, parse_items, require
from .registry import DATASETS, published_tasks

# task name -> (annotation file stem, video folder, uses start/end bounds)
TASKS: dict[str, tuple[str, str, bool]] = {
    "Action Count": ("action_count", "action_count", False),
    "Object Count": ("object_count", "object_count", False),
    "Action Sequence": ("action_sequence", "action_sequence", True),
    "Object Shuffle": ("object_shuffle", "object_shuffle", False),
    "Scene Transition": ("scene_transition", "scene_transition", False),
    "Action Localization": ("action_localization", "action_localization", True),
    "Action Antonym": ("action_antonym", "action_antonym", False),
    "Unexpected Action": ("unexpected_action", "unexpected_action", False),
    "Egocentric Sequence": ("egocentric_sequence", "egocentric_sequence", False),
    "Moving Direction": ("moving_direction", "moving_direction", False),
}


MANIFEST = "vlmflow.json"
"""Optional file at the root of a copy written by vlmflow, naming each json file's task."""


@DATASETS.register("tvbench", help="TVBench from its published json/ + video/ layout")
def load_tvbench(arg: str) -> list[Sample]:
    """TVBench from its published json/ + video/ layout."""
    if not arg:
        raise DataError("the tvbench dataset needs its root folder: tvbench:/data/TVBench")
    root = Path(arg).expanduser()
    json_dir = root / "json"
    if not json_dir.is_dir():
        raise DataError(f"TVBench root {root} has no json/ folder of annotations")
    stems = {stem: name for name, (stem, _, _) in TASKS.items()}
    own_names = _manifest_tasks(root)
    specs: dict[str, tuple[Path, str, bool]] = {}
    for file in sorted(json_dir.glob("*.json")):
        if file.stem in own_names:
            # Written by vlmflow (write_tvbench): the task keeps its own name.
            name, video_dir, bounded = own_names[file.stem], file.stem, True
        elif file.stem in stems:
            name = stems[file.stem]
            _, video_dir, bounded = TASKS[name]
        else:
            # Not a TVBench task: a task of its own, its videos in video/<stem>/, bounds kept.
            name, video_dir, bounded = file.stem, file.stem, True
        specs[name] = (file, video_dir, bounded)
    if not specs:
        raise DataError(f"TVBench folder {json_dir} holds no .json annotation files")
    out: list[Sample] = []
    for name in sorted(specs):
        file, folder, bounded = specs[name]
        video_dir = root / "video" / folder
        out.extend(load_file(file, name, "tvbench", _load_task, name, file, video_dir, bounded))
    return out


def _published(arg: str) -> tuple[str, ...]:
    """TVBench's 10 tasks, or the tasks a vlmflow-written copy's manifest names."""
    own = _manifest_tasks(Path(arg).expanduser()) if arg else {}
    return tuple(own.values()) or tuple(TASKS)


published_tasks("tvbench", _published)
published_tasks("tvbench_open_ended", _published)


def _manifest_tasks(root: Path) -> dict[str, str]:
    """File stem -> task name from ``vlmflow.json``, which only vlmflow-written copies have."""
    file = root / MANIFEST
    if not file.is_file():
        return {}
    try:
        tasks = json.loads(file.read_text(encoding="utf-8")).get("tasks", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"cannot read {file}: {e}") from e
    if not isinstance(tasks, dict):
        raise DataError(f"{file}: 'tasks' must map file stems to task names")
    return {str(k): str(v) for k, v in tasks.items()}


def _load_task(task: str, file: Path, video_dir: Path, bounded: bool) -> list[Sample]:
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read TVBench annotations {file}: {e}") from e
    if not isinstance(items, list):
        raise DataError(f"{file}: expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise DataError(f"{file}: task {task!r} has no items")

    def parse(i: int, item: Any) -> Sample:
        where = f"{file} item {i}"
        require(item, ("video", "question", "candidates", "answer"), where)  # null counts as missing
        candidates = option_texts(item["candidates"], "candidates", where)
        index = answer_by_text(item["answer"], candidates, where)
        bound = bound_of(item, where) if bounded else None
        return Sample(
            id=str(_id_of(i, item)),
            question=str(item["question"]),
            options=candidates,
            answer=index,
            task=task,
            source="tvbench",
            video=str(video_dir / str(item["video"])),
            bound=bound,
            meta={"json": str(file), "index": i, "video_name": str(item["video"])},
        )

    def _id_of(i: int, item: Any) -> Any:
        return item.get("id", f"{file.stem}-{i:05d}") if isinstance(item, dict) else f"{file.stem}-{i:05d}"

    return parse_items(file, enumerate(items), parse, source="tvbench", task=task, id_of=_id_of)
