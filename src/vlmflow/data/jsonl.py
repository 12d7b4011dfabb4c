"""The generic JSONL format (``jsonl:/path/qa.jsonl``): one VideoQA item per line.

Fields of a line::

    {"id": "q1", "video": "clips/a.mp4", "question": "...", "options": ["x", "y"],
     "answer": 1, "task": "counting", "start": 2.0, "end": 6.5}

``id`` defaults to the line number, ``task`` to ``"default"``; ``video`` is a video file or
a frame folder, relative paths resolved against the JSONL's folder; ``answer`` is an index
into ``options`` or the text of one option. Options that all carry their letters in order
(``"A. red"``, ``"B) blue"``) lose them, as Video-MME's do (the prompt letters options
itself); the answer may then also be given with its letter or as the letter alone (a
one-letter answer that is the letter of one option and the text of another, ``["A. b",
"B. a"]`` with answer ``"a"``, is refused as ambiguous). Without
``options`` the item is open-ended and
``answer`` is its reference text. ``start``/``end`` (seconds) bound the sampled window; a
frame folder (images in the order of the numbers in their names) is taken to play at
3 fps (:data:`~vlmflow.data.video.FOLDER_FPS`), so its bound counts 3 frames per second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import LETTERS, Sample
from ._common import all_lettered, checked_bound, parse_items, strip_letters
from .registry import DATASETS


@DATASETS.register("jsonl", help="generic JSONL: one {video, question, options, answer} per line")
def load_jsonl(arg: str) -> list[Sample]:
    """Generic JSONL: one {video, question, options, answer} object per line."""
    if not arg:
        raise DataError("the jsonl dataset needs a path: jsonl:/path/to/file.jsonl")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise DataError(f"JSONL file not found: {path}")
    try:  # split the bytes: a line that is not UTF-8 costs only itself
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    entries = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]

    def parse(lineno: int, line: bytes) -> Sample:
        where = f"{path}:{lineno}"
        obj = _object(line, where)
        return _parse(obj, where, lineno, path.parent)

    def id_of(lineno: int, line: bytes) -> Any:  # an unreadable line keeps the line-number id
        try:
            return _object(line, "").get("id", lineno)
        except DataError:
            return lineno

    def task_of(line: bytes) -> Any:
        return _object(line, "").get("task")

    samples = parse_items(path, entries, parse, source="jsonl", task=task_of, id_of=id_of)
    out: list[Sample] = []
    seen: set[str] = set()
    for sample in samples:
        where = f"{path}:{sample.meta.get('line', sample.meta.get('index'))}"
        if sample.id in seen:
            raise DataError(f"{where}: duplicate id {sample.id!r}")
        seen.add(sample.id)
        out.append(sample)
    return out


def _object(line: bytes, where: str) -> dict[str, Any]:
    """One line's JSON object; text that is not UTF-8, invalid JSON or another JSON value is
    an error."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse(obj: dict[str, Any], where: str, lineno: int, base: Path) -> Sample:
    for key in ("video", "question", "answer"):
        if key not in obj or obj[key] is None or obj[key] == "":
            raise DataError(f"{where}: missing field {key!r}")
    video = Path(str(obj["video"])).expanduser()
    if not video.is_absolute():
        video = base / video
    question = str(obj["question"])
    options = obj.get("options")
    answer = obj["answer"]
    answer_index: int | None = None
    answer_text: str | None = None
    if options is None or options == []:
        answer_text = str(answer)
        opts: tuple[str, ...] = ()
    else:
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise DataError(f"{where}: field 'options' must be a list of strings")
        lettered = all_lettered(options)
        # Options that already carry their letters ("A. red", "B. blue") lose them, as in the
        # Video-MME loader, so the prompt builder does not letter them twice.
        opts = strip_letters(options, where) if lettered else tuple(options)
        if isinstance(answer, bool):
            raise DataError(f"{where}: field 'answer' must be an index or an option text")
        if isinstance(answer, int):
            if not 0 <= answer < len(opts):
                raise DataError(f"{where}: answer index {answer} outside 0..{len(opts) - 1}")
            answer_index = answer
        elif isinstance(answer, str):
            answer_index = _option_index(answer, tuple(options))
            if answer_index is None and lettered:
                sample = f"{where} (sample {str(obj.get('id', lineno))!r})"
                answer_index = _lettered_answer(answer, opts, sample)
            if answer_index is None:
                raise DataError(f"{where}: answer {answer!r} is not among options {list(options)}")
        else:
            raise DataError(f"{where}: field 'answer' must be an index or an option text")
    bound = None
    if obj.get("start") is not None or obj.get("end") is not None:
        try:
            start = float(obj["start"]) if obj.get("start") is not None else 0.0
            end = float(obj["end"]) if obj.get("end") is not None else 1e5
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: 'start'/'end' must be numbers of seconds") from e
        bound = checked_bound(start, end, where)
    meta = {k: v for k, v in obj.items() if k not in _KNOWN}
    meta["line"] = lineno
    return Sample(
        id=str(obj.get("id", lineno)),
        question=question,
        options=opts,
        answer=answer_index,
        task=str(obj.get("task") or "default"),
        source="jsonl",
        video=str(video),
        bound=bound,
        answer_text=answer_text,
        meta=meta,
    )


_KNOWN = {"id", "video", "question", "options", "answer", "task", "start", "end"}


def _lettered_answer(answer: str, opts: tuple[str, ...], where: str) -> int | None:
    """The option a string answer names, for options that carried their letters: its letter
    (``"B"``) or its text. A one-letter answer that is the letter of one option and the text
    of another (``["A. b", "B. a"]`` with answer ``"a"``) is refused as ambiguous."""
    by_text = _option_index(answer, opts)
    letter = answer.strip().rstrip(".").upper()
    by_letter = LETTERS.index(letter) if len(letter) == 1 and letter in LETTERS[: len(opts)] else None
    if by_letter is not None and by_text is not None and by_letter != by_text:
        raise DataError(
            f"{where}: ambiguous one-letter answer {answer!r}: it is the letter of option "
            f"{LETTERS[by_letter]} ({opts[by_letter]!r}) and the text of option "
            f"{LETTERS[by_text]} ({opts[by_text]!r}); give the option text or the letter with "
            f"its text (e.g. {LETTERS[by_text] + '. ' + opts[by_text]!r})"
        )
    return by_letter if by_letter is not None else by_text


def _option_index(text: str, options: tuple[str, ...]) -> int | None:
    """Index of the option equal to ``text`` (exactly, else ignoring surrounding space)."""
    if text in options:
        return options.index(text)
    stripped = [o.strip() for o in options]
    return stripped.index(text.strip()) if text.strip() in stripped else None
