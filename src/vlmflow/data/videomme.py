"""Video-MME (``videomme:/data/Video-MME``), read from its published layout (HF ``lmms-lab/Video-MME``).

The annotations are ``{root}/videomme/test-00000-of-00001.parquet`` (read with pyarrow; any
other ``videomme/*.parquet`` shards are read too, in name order). The columns used are
``url`` (a YouTube link; ``videoID`` when there is no url), ``question``, ``options``,
``answer`` (a letter), ``question_id`` and ``task_type`` (the task); ``duration``,
``domain``, ``sub_category`` and ``video_id`` go to ``meta``. ``options`` are published
already lettered (``"A. xxx"``); the letter prefix is stripped so options are plain texts
and the prompt builder letters them itself. The video is ``{root}/data/{youtube_id}`` with
the first of ``.mp4``, ``.avi``, ``.mov`` or ``.mkv`` that exists. Subtitles are not used.

Task ids are the alphabetical order of ``task_type``: 0 Action Reasoning, 1 Action
Recognition, 2 Attribute Perception, 3 Counting Problem, 4 Information Synopsis, 5 OCR
Problems, 6 Object Reasoning, 7 Object Recognition, 8 Spatial Perception, 9 Spatial
Reasoning, 10 Temporal Perception, 11 Temporal Reasoning (the paper analyses 1 and 8).
Frames: the paper's 8 segment midpoints over the whole video.

The paper's prompt for Video-MME differs from its other benchmarks (lettered ``A. xxx``
option lines and the answer prompt ``Best option:``); vlmflow's prompt builder uses its
one format for every benchmark, and ``meta["paper_options"]`` keeps the published strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..errors import DataError
from ..sample import LETTERS, Sample
from ._common import field_of, first_existing, parse_items, root_of, strip_letters
from .registry import DATASETS, published_tasks

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
"""Extensions tried, in this order, for a Video-MME video."""

ANNOTATIONS = "videomme/test-00000-of-00001.parquet"
TASKS = (
    "Action Reasoning",
    "Action Recognition",
    "Attribute Perception",
    "Counting Problem",
    "Information Synopsis",
    "OCR Problems",
    "Object Reasoning",
    "Object Recognition",
    "Spatial Perception",
    "Spatial Reasoning",
    "Temporal Perception",
    "Temporal Reasoning",
)
"""Video-MME's published ``task_type`` values, which the paper's task ids number."""
published_tasks("videomme", TASKS)
published_tasks("videomme_open_ended", TASKS)
_META = ("duration", "domain", "sub_category", "video_id", "videoID", "url")


@DATASETS.register(
    "videomme", help="Video-MME from its published videomme/*.parquet + data/<youtube id> layout"
)
def load_videomme(arg: str) -> list[Sample]:
    """Video-MME from its published videomme/*.parquet + data/<youtube id> layout."""
    root = root_of(arg, "videomme", "/data/Video-MME")
    files = [root / ANNOTATIONS] if (root / ANNOTATIONS).is_file() else []
    if not files:
        files = sorted((root / "videomme").glob("*.parquet"))
    if not files:
        raise DataError(f"Video-MME root {root} has no {ANNOTATIONS} (nor any videomme/*.parquet)")
    out: list[Sample] = []
    for file in files:
        rows = _read_parquet(file)
        if not rows:
            raise DataError(f"{file}: the annotation table has no rows")
        out.extend(
            parse_items(
                file,
                enumerate(rows),
                lambda i, row, file=file: _sample(row, f"{file} row {i}", file, i, root / "data"),
                source="videomme",
                task=field_of("task_type"),
                id_of=lambda i, row: row.get("question_id"),
            )
        )
    return out


def _read_parquet(file: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(file).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        reason = " ".join(str(e).split())  # pyarrow's messages span lines; ours are one line
        raise DataError(f"cannot read Video-MME annotations {file}: {reason}") from e


def youtube_id(url: str) -> str:
    """The video id of a YouTube link (``watch?v=ID``, ``youtu.be/ID``, ``shorts/ID``) or a bare id."""
    parsed = urlparse(url.strip())
    if parsed.query:
        v = parse_qs(parsed.query).get("v")
        if v and v[0]:
            return v[0]
    return parsed.path.rstrip("/").rsplit("/", 1)[-1]


def _sample(row: dict[str, Any], where: str, file: Path, index: int, video_dir: Path) -> Sample:
    for key in ("question", "options", "answer", "question_id", "task_type"):
        if row.get(key) is None:
            raise DataError(f"{where}: missing field {key!r}")
    qid = str(row["question_id"])
    where = f"{where} (question_id {qid})"
    link = row.get("url") or row.get("videoID")
    if not link:
        raise DataError(f"{where}: missing field 'url'")
    raw = row["options"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: 'options' must be a non-empty list of lettered options")
    options = strip_letters(list(raw), where)
    letter = str(row["answer"]).strip().rstrip(".").upper()
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        raise DataError(f"{where}: answer {row['answer']!r} is not among candidates {list(raw)}")
    vid = youtube_id(str(link))
    meta = {k: row[k] for k in _META if row.get(k) is not None}
    meta.update({"parquet": str(file), "index": index, "youtube_id": vid, "paper_options": list(raw)})
    return Sample(
        id=qid,
        question=str(row["question"]),
        options=options,
        answer=LETTERS.index(letter),
        task=str(row["task_type"]),
        source="videomme",
        video=str(first_existing(video_dir, vid, VIDEO_EXTENSIONS)),
        meta=meta,
    )
