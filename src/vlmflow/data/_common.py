"""Small checks shared by the benchmark loaders, so every loader fails the same way.

Each helper raises :class:`DataError` with a ``where`` prefix (the annotation file and the
item's index or id), which is what a user needs to find and fix the offending line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError


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
        return float(item["start"]), float(item["end"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: 'start'/'end' must be numbers of seconds") from e


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
