"""Small checks shared by the benchmark loaders, so every loader fails the same way.

Each helper raises :class:`DataError` with a ``where`` prefix (the annotation file and the
item's index or id), which is what a user needs to find and fix the offending line.
:func:`parse_items` runs a loader's per-item parse so that such an item costs only itself:
it becomes a failed Sample carrying that reason, and the run records it and goes on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sample import LETTERS, Sample


def root_of(arg: str, name: str, example: str) -> Path:
    """The dataset root folder of a spec's argument; an empty or missing one is an error."""
    if not arg:
        raise DataError(f"the {name} dataset needs its root folder: {name}:{example}")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"{name} root folder not found: {root}")
    return root


def read_json(file: Path, kind: str) -> Any:
    """The parsed JSON of an annotation file; unreadable or invalid JSON is an error."""
    if not file.is_file():
        raise DataError(f"{kind} annotation file not found: {file}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {kind} annotations {file}: {e}") from e


def require(item: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    """``item`` as a dict holding every key of ``keys`` (``None`` counts as missing)."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    for key in keys:
        if item.get(key) is None:
            raise DataError(f"{where}: missing field {key!r}")
    return item


def option_texts(value: Any, field: str, where: str) -> tuple[str, ...]:
    """A non-empty list of option strings as a tuple."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: {field!r} must be a non-empty list of option texts")
    return tuple(str(v) for v in value)


_LETTERED = re.compile(r"^\s*([A-Z])\s*[.)]\s?(.*)$", re.DOTALL)


def _after_letter(option: Any, letter: str) -> str | None:
    """``option``'s text after its letter when it starts with ``letter`` (``"A. red"``), else ``None``."""
    m = _LETTERED.match(str(option))
    return m.group(2).strip() if m is not None and m.group(1) == letter else None


def strip_letters(options: list[str], where: str) -> tuple[str, ...]:
    """Plain option texts of ``["A. xxx", "B. yyy", ...]``; the letters must run A, B, C, ..."""
    out = []
    for i, opt in enumerate(options):
        text = _after_letter(opt, LETTERS[i])
        if text is None:
            raise DataError(f"{where}: option {i} {opt!r} does not start with the letter '{LETTERS[i]}. '")
        out.append(text)
    return tuple(out)


def all_lettered(options: list[str] | tuple[str, ...]) -> bool:
    """Whether ``options`` already carry their letters in order (``"A. red"``, ``"B) blue"``, ...)."""
    return 0 < len(options) <= len(LETTERS) and all(
        _after_letter(opt, LETTERS[i]) is not None for i, opt in enumerate(options)
    )


def answer_by_text(answer: Any, options: tuple[str, ...], where: str) -> int:
    """Index of the option whose text is ``answer`` (exactly, else ignoring outer spaces)."""
    text = str(answer)
    if text in options:
        return options.index(text)
    stripped = [o.strip() for o in options]
    if text.strip() in stripped:
        return stripped.index(text.strip())
    raise DataError(f"{where}: answer {text!r} is not among candidates {list(options)}")


def answer_by_index(answer: Any, options: tuple[str, ...], where: str) -> int:
    """``answer`` as an index into ``options``; a non-integer or out-of-range one is an error."""
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(f"{where}: answer {answer!r} must be an integer index into the options")
    if not 0 <= answer < len(options):
        raise DataError(f"{where}: answer {answer} is not among candidates (indices 0..{len(options) - 1})")
    return answer


def bound_of(item: dict[str, Any], where: str) -> tuple[float, float] | None:
    """``(start, end)`` seconds from an item's ``start``/``end``, or ``None`` without both."""
    if item.get("start") is None or item.get("end") is None:
        return None
    try:
        start, end = float(item["start"]), float(item["end"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: 'start'/'end' must be numbers of seconds") from e
    return checked_bound(start, end, where)


def checked_bound(start: float, end: float, where: str) -> tuple[float, float]:
    """``(start, end)`` when it is a usable window: finite, and not starting after it ends."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise DataError(f"{where}: 'start'/'end' must be finite seconds, got start={start}, end={end}")
    if start > end:
        raise DataError(f"{where}: the window starts after it ends (start={start:g}s > end={end:g}s)")
    return start, end


def first_existing(base: Path, stem: str, extensions: tuple[str, ...]) -> Path:
    """``base/stem.ext`` for the first extension that exists, else the first candidate.

    Returning a path even when none exists defers the error to decoding, where it names
    the sample, so one missing video does not stop the whole benchmark from loading.
    """
    for ext in extensions:
        path = base / f"{stem}{ext}"
        if path.exists():
            return path
    return base / f"{stem}{extensions[0]}"


def parse_items(
    file: Path,
    entries: Iterable[tuple[Any, Any]],
    parse: Callable[[Any, Any], Sample],
    *,
    source: str,
    task: Callable[[Any], Any] | str,
    id_of: Callable[[Any, Any], Any],
) -> list[Sample]:
    """Samples of one annotation file's items, a malformed item becoming a failed Sample.

    ``entries`` are ``(key, item)`` pairs (the item's index, or its key in a dict-keyed
    file); ``parse(key, item)`` builds its Sample or raises :class:`DataError` naming the file
    and item. A malformed item is kept as a Sample whose ``error`` holds that reason, with
    the id ``id_of(key, item)`` would give it (``<file name>#<key>`` when that fails) and
    the task ``task`` (a name, or a function of the item), so a run records it as failed
    and goes on. When no item can be read the whole file is refused: that is a file of
    another shape, and running on it would only fail every sample.

    >>> from pathlib import Path
    >>> def parse(i, item):
    ...     if not isinstance(item, str):
    ...         raise DataError(f"qa.json item {i}: expected a question")
    ...     return Sample(id=str(i), question=item)
    >>> good, bad = parse_items(Path("qa.json"), enumerate(["why?", 3]), parse,
    ...                         source="x", task="t", id_of=lambda i, item: i)
    >>> bad.id, bad.error
    ('1', 'qa.json item 1: expected a question')
    """
    out: list[Sample] = []
    first: str | None = None
    for key, item in entries:
        try:
            out.append(parse(key, item))
        except DataError as e:
            first = first or str(e)
            out.append(_failed(file, key, item, str(e), source, task, id_of))
    if out and all(s.error is not None for s in out):
        raise DataError(f"{file}: none of its {len(out)} items can be read; the first: {first}")
    return out


def _failed(file, key, item, reason, source, task, id_of) -> Sample:
    """The failed Sample of a malformed item: its best-known id and task, and the reason."""
    try:
        sid = id_of(key, item)
    except Exception:  # a malformed item may lack or garble its id field
        sid = None
    try:
        name = task(item) if callable(task) else task
    except Exception:
        name = None
    return Sample(
        id=f"{file.name}#{key}" if sid is None or str(sid) == "" else str(sid),
        question="",
        task=str(name) if name not in (None, "") else "default",
        source=source,
        meta={"file": str(file), "index": key},
        error=reason,
    )


FILE_ERROR = "file_error"
"""``Sample.meta`` key marking the stand-in Sample of an annotation file that cannot be read."""


def load_file(
    file: Path, task: str, source: str, load: Callable[..., list[Sample]], *args: Any
) -> list[Sample]:
    """The Samples ``load(*args)`` reads from one task's annotation ``file``; when the whole file
    cannot be read (unreadable, empty, of another shape, every item malformed) one stand-in
    Sample of ``task`` carries the reason instead. :func:`~vlmflow.data.load_dataset` raises
    that reason only when the task is selected, so a bad file of another task never stops a
    run."""
    try:
        return load(*args)
    except DataError as e:
        return [
            Sample(
                id=f"{file.name}#file",
                question="",
                task=task,
                source=source,
                meta={"file": str(file), FILE_ERROR: True},
                error=str(e),
            )
        ]


def field_of(name: str) -> Callable[[Any], Any]:
    """``item[name]`` of a dict item, else ``None`` (for :func:`parse_items`' ``task``)."""
    return lambda item: item.get(name) if isinstance(item, dict) else None
