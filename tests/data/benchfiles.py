"""Tiny benchmark copies written in each benchmark's published layout, for the loader tests.

Every video is a few flat-colour frames (frame i has colour ``palette(n)[i]``), so a test
can tell from the decoded pixels exactly which frames were sampled. Sizes are 32x32 and a
few dozen frames at most: the whole set encodes in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmflow.data import write_video


def palette(n: int) -> np.ndarray:
    """``n`` flat colours, 40 levels apart, so lossy coding cannot confuse two of them."""
    i = np.arange(n)
    return np.stack([(i % 7) * 40, (i // 7 % 7) * 40, (i // 49 % 7) * 40], axis=1).astype(np.uint8)


def flat_frames(n: int, size: int = 32) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 frames, frame i one flat colour ``palette(n)[i]``."""
    return np.ascontiguousarray(np.broadcast_to(palette(n)[:, None, None, :], (n, size, size, 3)))


def which_frames(frames: np.ndarray, n: int) -> list[int]:
    """For decoded frames of an ``n``-frame flat video, the index of each frame's colour."""
    means = frames.reshape(len(frames), -1, 3).astype(float).mean(axis=1)
    pal = palette(n).astype(float)
    return [int(np.argmin(((pal - m) ** 2).sum(axis=1))) for m in means]


def video(path: Path, n: int = 16, fps: float = 8) -> Path:
    """A flat-colour video of ``n`` frames; the codec follows the extension (mp4 -> h264, ...)."""
    return write_video(path, flat_frames(n), fps=fps, gop_size=4)


def frame_folder(folder: Path, n: int) -> Path:
    """MVBench's frame folder: ``00001.jpg`` ... ``{n:05d}.jpg``, frame i one flat colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(palette(n)):
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(folder / f"{i + 1:05d}.jpg", quality=95)
    return folder


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------- per benchmark


def tomato_item(key: str, demo: str = "human", answer: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "question": f"What happens in {key}?",
        "options": ["up", "down", "left", "right"],
        "answer": answer,
        "key": key,
        "demonstration_type": demo,
        **kw,
    }


def mvbench_item(video_name: str, answer: str = "right", **kw: Any) -> dict[str, Any]:
    return {
        "video": video_name,
        "question": "Which way?",
        "candidates": ["left", "right", "up"],
        "answer": answer,
        **kw,
    }


def videomme_row(
    qid: str, task: str, youtube_id: str = "abc123", answer: str = "B", **kw: Any
) -> dict[str, Any]:
    return {
        "video_id": qid.split("-")[0],
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "url": f"https://www.youtube.com/watch?v={youtube_id}",
        "videoID": youtube_id,
        "question_id": qid,
        "task_type": task,
        "question": f"What is shown ({qid})?",
        "options": ["A. a cat.", "B. a dog.", "C. a bird.", "D. a fish."],
        "answer": answer,
        **kw,
    }


def write_videomme(root: Path, rows: list[dict[str, Any]]) -> Path:
    """``{root}/videomme/test-00000-of-00001.parquet`` holding ``rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "videomme").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return root


def lvb_item(i: int, category: str = "O2E", video_path: str = "v.mp4", **kw: Any) -> dict[str, Any]:
    return {
        "video_id": f"vid{i}",
        "question": f"What happened {i}?",
        "question_wo_referring_query": "What happened?",
        "candidates": ["a", "b", "c", "d", "e"],
        "correct_choice": 2,
        "position": [1, 2],
        "topic_category": "NP-News-Programs",
        "question_category": category,
        "level": "L2-Relation",
        "id": f"q{i}",
        "video_path": video_path,
        "subtitle_path": f"vid{i}_en.json",
        "duration": 3.0,
        "starting_timestamp_for_subtitles": 0,
        "view_count": 1,
        **kw,
    }


def only_failure(samples: list, match: str, where: str) -> Any:
    """The one failed Sample of ``samples``: its reason matches ``match`` and names ``where``.

    Every other sample must be well formed (no error), so a malformed item costs only itself.
    """
    import re

    failed = [s for s in samples if s.error is not None]
    assert len(failed) == 1, [s.error for s in failed]
    assert re.search(match, failed[0].error), failed[0].error
    assert where in failed[0].error, failed[0].error
    assert all(s.question for s in samples if s.error is None)
    return failed[0]
