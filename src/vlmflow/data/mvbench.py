"""MVBench (``mvbench:/data/MVBench``), read from its published layout (HF ``OpenGVLab/MVBench``).

``{root}/json/<task file>.json`` is a JSON list with TVBench's fields: ``video``,
``question``, ``candidates`` and ``answer`` (the *text* of the correct candidate), plus
``start``/``end`` seconds for the bounded tasks. An item's video is
``{root}/video/<prefix>/<video>``, the prefix and whether the task is bounded coming from
:data:`TASKS`. Episodic Reasoning's ``video`` names a folder of frames
(``tvqa/frames_fps3_hq/<clip>/00001.jpg``, ...) played at 3 fps; a ``.gif`` video is
decoded frame by frame (it has no seek index) and timed by its own frame delays, where
MVBench's ``read_gif`` assumes 25 fps (the two only differ for a bounded gif, and no
bounded task has gifs); everything else is a video file (mp4, webm, avi, ...). Any other
``json/*.json`` becomes a task named after its file stem with its videos in
``video/<stem>/`` and its bounds kept.

The paper evaluates on MVBench but runs no analysis on it (its loader is only used by
``pllava_eval_mvbench.py``), so there are no paper task ids beyond the alphabetical
convention. Frames: 8 segment midpoints, inside ``(start, end)`` for bounded tasks.
One known difference: MVBench's frame-folder reader numbers files from 1 and takes
``max_frame`` as the file count, vlmflow's counts positions from 0, so inside a bound it
takes the file one after MVBench's (1/3 s later); without a bound the picks coincide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import Sample
from ._common import (
    answer_by_text,
    bound_of,
    load_file,
    option_texts,
    parse_items,
    read_json,
    require,
    root_of,
)
from .registry import DATASETS, published_tasks
from .video import FOLDER_FPS

# task name -> (annotation file, video prefix under {root}/video/, data type, uses start/end)
# The reference table (MVBenchDataset.data_list_info): every task is "video" except Episodic
# Reasoning's frame folders; a .gif is recognised by its extension (MVBench's read_gif).
TASKS: dict[str, tuple[str, str, str, bool]] = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480/", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480/", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video/", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test/", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation/", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480/", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos/", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation/", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video/", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video/", "video", False),
    "Action Count": ("action_count.json", "perception/videos/", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation/", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation/", "video", False),
    "State Change": ("state_change.json", "perception/videos/", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd/", "video", False),
    "Character Order": ("character_order.json", "perception/videos/", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa/", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    "Counterfactual Inference": (
        "counterfactual_inference.json",
        "clevrer/video_validation/",
        "video",
        False,
    ),
}

published_tasks("mvbench", TASKS)


@DATASETS.register("mvbench", help="MVBench (20 tasks) from its published json/ + video/<prefix>/ layout")
def load_mvbench(arg: str) -> list[Sample]:
    """MVBench (20 tasks) from its published json/ + video/<prefix>/ layout."""
    root = root_of(arg, "mvbench", "/data/MVBench")
    json_dir = root / "json"
    if not json_dir.is_dir():
        raise DataError(f"MVBench root {root} has no json/ folder of annotations")
    by_file = {spec[0]: name for name, spec in TASKS.items()}
    specs: dict[str, tuple[Path, str, str, bool]] = {}
    for file in sorted(json_dir.glob("*.json")):
        if file.name in by_file:
            name = by_file[file.name]
            _, prefix, data_type, bounded = TASKS[name]
        else:
            name, prefix, data_type, bounded = file.stem, f"{file.stem}/", "video", True
        specs[name] = (file, prefix, data_type, bounded)
    if not specs:
        raise DataError(f"MVBench folder {json_dir} holds no .json annotation files")
    out: list[Sample] = []
    for name in sorted(specs):
        file, prefix, data_type, bounded = specs[name]
        video_dir = root / "video" / prefix
        out.extend(load_file(file, name, "mvbench", _load_task, name, file, video_dir, data_type, bounded))
    return out


def _load_task(task: str, file: Path, video_dir: Path, data_type: str, bounded: bool) -> list[Sample]:
    items = read_json(file, "MVBench")
    if not isinstance(items, list):
        raise DataError(f"{file}: expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise DataError(f"{file}: task {task!r} has no items")

    def parse(i: int, item: Any) -> Sample:
        where = f"{file} item {i}"
        require(item, ("video", "question", "candidates", "answer"), where)
        options = option_texts(item["candidates"], "candidates", where)
        answer = answer_by_text(item["answer"], options, where)
        bound = bound_of(item, where) if bounded else None
        name = str(item["video"])
        kind = data_type if data_type == "frame" else ("gif" if name.lower().endswith(".gif") else "video")
        meta = {"json": str(file), "index": i, "video_name": name, "data_type": kind}
        if kind == "frame":
            meta["folder_fps"] = FOLDER_FPS
        return Sample(
            id=str(_id_of(i, item)),
            question=str(item["question"]),
            options=options,
            answer=answer,
            task=task,
            source="mvbench",
            video=str(video_dir / name),
            bound=bound,
            meta=meta,
        )

    def _id_of(i: int, item: Any) -> Any:
        return item.get("id", f"{file.stem}-{i:05d}") if isinstance(item, dict) else f"{file.stem}-{i:05d}"

    return parse_items(file, enumerate(items), parse, source="mvbench", task=task, id_of=_id_of)
