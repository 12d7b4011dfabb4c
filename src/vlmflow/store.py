"""The result store: append-only JSONL records per shard, resumable, crash-safe.

A *unit* is one (sample, analysis) pair. Its rows are appended to
``records/shard-RRRRR.jsonl`` tagged with a fresh attempt id, flushed and fsynced; then
one line naming the unit, the attempt, its row count and the SHA-256 of its row lines is
appended to ``records/shard-RRRRR.done.jsonl`` and fsynced. What the store guarantees
(docs/reliability.md says how each is tested):

* **Nothing is marked done that is not complete.** A unit counts as done only when a done
  marker names it *and* exactly the marker's number of rows of that attempt can be read
  back with the marker's checksum. A unit whose rows were torn (a crash inside a write, a
  full disk, a file cut short by hand) is not done and is recomputed on resume.
* **No record is read twice.** Reading keeps, per unit, one attempt (the last valid one),
  so a unit recomputed after a crash never yields duplicates.
* **A failed unit is retried, never rewritten.** A unit whose rows carry an ``error`` is
  *failed* (:attr:`Scan.failed`). A resumed run writes it again as a new attempt whose done
  marker names the failed attempt it ``supersedes``; reading drops a superseded attempt
  whatever shard or order it is read in. Until that marker is on disk the old failure
  stands (and the unit is retried again on the next resume): nothing is edited in place.
* **A torn line never swallows the next record.** Every append starts on a fresh line: if
  the file does not end with a newline (a fragment left by a crash), a newline is written
  first, so the fragment stays an unreadable line of its own.
* **One writer per shard.** A writer holds an advisory lock on its shard
  (:class:`vlmflow.lock.FolderLock`, released by the OS if the process dies).
* **Ctrl-C never tears a write.** SIGINT (and SIGTERM, when a Python-level handler is
  installed for it) arriving while a unit is being written is held back until its done
  marker is on disk, then handed on (``KeyboardInterrupt``).
* **A full or unwritable disk stops the run** with a :class:`StoreError` naming the file
  and what to do; what was finished stays readable and the run resumes once space returns.
* **Order does not depend on sharding.** :func:`read_records` returns units sorted by
  (sample id, analysis), each unit's rows in the order written, so a run on one process
  and on several gives the same records.

Test hooks: with ``VLMFLOW_TEST_SLEEP_AFTER_ROWS=SECONDS`` (or ``SECONDS:SAMPLE_ID`` to pause
on that sample's units only) a unit's rows are written, then the process sleeps before
writing its done marker, so a test can kill it exactly there (tests/test_store.py). With
``VLMFLOW_TEST_ENOSPC_AFTER_BYTES=N`` every append fails with ``ENOSPC`` once the records
folder holds N bytes, after writing what fits (a full disk, tests/test_store_reliability.py).
Both are read at each write and do nothing when unset.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import RunError, RunStopped
from .lock import FolderLock

log = logging.getLogger(__name__)

#: errno values that mean "the disk cannot take our writes" wherever they come from (the
#: store, a frame cache): they stop a run, are never recorded as a sample's failure, and
#: the run resumes once they are fixed. (Any error writing the store itself also stops it.)
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class StoreError(RunStopped):
    """The run folder cannot take more writes (disk full, read-only, no permission)."""


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


#: errno values with which a folder or its disk refuses a write: the environment's
#: (:data:`ENVIRONMENT_ERRNOS`), no permission, and an I/O error of the device
REFUSED_WRITE_ERRNOS = ENVIRONMENT_ERRNOS | {errno.EACCES, errno.EPERM, errno.EIO}


def refuses_write(exc: BaseException) -> bool:
    """Whether ``exc`` is the folder or its disk refusing a write (:data:`REFUSED_WRITE_ERRNOS`),
    not, say, a file name the file system cannot take."""
    return isinstance(exc, OSError) and exc.errno in REFUSED_WRITE_ERRNOS


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk refusing writes (see :data:`ENVIRONMENT_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def store_error(path: Path, exc: OSError) -> StoreError:
    """A :class:`StoreError` for ``exc`` raised while writing ``path``, saying what to do."""
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (disk quota exceeded)",
        errno.EROFS: "use a writable --out folder",
        errno.EACCES: "make the folder writable or use another --out folder",
        errno.EPERM: "make the folder writable or use another --out folder",
    }.get(exc.errno or 0, "fix the disk" if exc.errno is None or refuses_write(exc) else "fix that")
    return StoreError(
        f"cannot write {path}: {exc.strerror or exc}; the run stopped cleanly and every finished "
        f"unit is kept; {hint}, then re-run the same command to resume"
    )


class RecordStore:
    """Records of one run folder, written by shard ``rank``.

    Reading (:meth:`done_units`, :meth:`read`) needs no lock; the first write takes the
    shard's lock (:meth:`acquire`), held until :meth:`close`. Use as a context manager::

        with RecordStore(run_dir, rank=0) as store:
            store.write_unit("sample-1", "eval", [{"pred": "A"}])
    """

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.dir = self.root / "records"
        self.rank = rank
        self.rows_path = self.dir / f"shard-{rank:05d}.jsonl"
        self.done_path = self.dir / f"shard-{rank:05d}.done.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)  # as before: the folder exists once opened
        except OSError:
            pass  # a read-only folder can still be read; writing says why it cannot (acquire)
        self._lock = FolderLock(
            self.dir / f"shard-{rank:05d}.lock", what=f"record shard {rank} of {self.root}"
        )

    def acquire(self) -> RecordStore:
        """Create ``records/``, take this shard's writer lock (``RunError`` if held) and
        create the shard's done-marker file, empty, if it has none: a row shard without one
        then means the file was lost, not that a crash came before the shard's first marker."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(self.dir, exc) from exc
        self._lock.acquire()
        if not self.done_path.exists():
            try:
                self.done_path.touch()
            except OSError as exc:
                raise store_error(self.done_path, exc) from exc
        return self

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RecordStore:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_units(self) -> set[tuple[str, str]]:
        """(sample_id, analysis) units finished, complete and intact, in any shard of this run
        (failed ones too: see :meth:`scan`)."""
        return set(scan(self.dir).units)

    def scan(self) -> Scan:
        """The verified state of every shard of this run: finished units, which of them failed."""
        return scan(self.dir)

    def write_unit(
        self,
        sample_id: str,
        analysis: str,
        rows: Iterable[dict[str, Any]],
        *,
        supersedes: str | None = None,
    ) -> None:
        """Append one unit's rows, then its done marker; each fsynced. A SIGINT (or a handled
        SIGTERM) meanwhile is held back until the marker is written; a failing disk raises
        :class:`StoreError`.

        ``supersedes``: the attempt id of this unit's earlier, failed attempt that this one
        replaces (a retry); once this marker is on disk, reading never returns the old one."""
        self.acquire()
        attempt = uuid.uuid4().hex
        lines = []
        for row in rows:
            row = {**row, "sample_id": sample_id, "analysis": analysis, "_attempt": attempt}
            lines.append(json.dumps(row, default=_json_default).encode("ascii"))
        marker = {
            "sample_id": sample_id,
            "analysis": analysis,
            "_attempt": attempt,
            "rows": len(lines),
            "sha256": _digest(lines),
        }
        if supersedes is not None:
            marker["supersedes"] = supersedes
        with deferred_signals():
            _append(self.rows_path, lines)
            _test_pause(sample_id)
            _append(self.done_path, [json.dumps(marker).encode("ascii")])

    def read(self) -> pd.DataFrame:
        return read_records(self.root)


def _digest(lines: list[bytes]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line + b"\n")
    return h.hexdigest()


#: the signals a run stops on (Ctrl-C; SIGTERM from ``kill``, a batch scheduler, torchrun)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_signals(*, deliver: bool = True) -> Iterator[None]:
    """Hold back SIGINT and SIGTERM inside the block; after it, hand each signal that came
    (once each, in the order they came) to the handler that was installed before for it
    (Python's default for SIGINT raises ``KeyboardInterrupt``); one that raises stops the
    rest. The CLI's own stop handler (marked ``stops_run``: it stops on the first and only
    says so for a later one) gets the first only. ``deliver=False`` drops them instead (a
    block that ends a run already stopping), and so does a block that raises.

    Only in the main thread, and only for a signal with a Python-level handler (SIG_IGN and
    SIG_DFL are left as they are: SIGTERM then ends the process at once, as before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: h for s in STOP_SIGNALS if callable(h := signal.getsignal(s))}
    caught: list[int] = []
    for signum in previous:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not deliver:
        return
    for signum in dict.fromkeys(caught):  # distinct, in the order they came
        handler = previous[signum]
        handler(signum, None)  # a handler that raises (KeyboardInterrupt) stops the rest
        if getattr(handler, "stops_run", False):
            break


def _test_pause(sample_id: str) -> None:
    """The ``VLMFLOW_TEST_SLEEP_AFTER_ROWS`` hook (see the module docstring)."""
    hook = os.environ.get("VLMFLOW_TEST_SLEEP_AFTER_ROWS")
    if not hook:
        return
    seconds, _, only = hook.partition(":")
    if not only or only == sample_id:
        time.sleep(float(seconds))


def _test_enospc(path: Path, data: bytes) -> bytes:
    """The ``VLMFLOW_TEST_ENOSPC_AFTER_BYTES`` hook: how much of ``data`` fits, or raise."""
    limit = os.environ.get("VLMFLOW_TEST_ENOSPC_AFTER_BYTES")
    if not limit:
        return data
    used = sum(p.stat().st_size for p in path.parent.glob("shard-*.jsonl"))
    room = int(limit) - used
    if room >= len(data):
        return data
    if room > 0:
        with open(path, "ab") as f:  # what fits, as a real full disk does
            f.write(data[:room])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _append(path: Path, lines: list[bytes]) -> None:
    """Append ``lines`` to ``path`` starting on a fresh line; flush and fsync (and fsync the
    folder when the file is new, so its name survives a power cut too)."""
    if not lines:
        return
    data = b"\n".join(lines) + b"\n"
    try:
        new = not path.exists()
        with open(path, "a+b") as f:  # read too: to see the last byte
            size = f.seek(0, os.SEEK_END)
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                data = b"\n" + data  # never append onto a torn fragment
            data = _test_enospc(path, data)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_dir(path.parent)
    except OSError as exc:
        raise store_error(path, exc) from exc


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that files created or renamed in it survive a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the file itself is synced
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: a temporary file beside it, fsynced, renamed.

    A crash or a full disk leaves either the old file or the new one, never half of one.
    Raises :class:`StoreError` when the disk refuses the write (the old file is kept)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; after the block it is
    fsynced and renamed over ``path``, so readers see the old file or the new one whole.

    If the block raises, ``path`` keeps its old content and the temporary file is removed;
    a crash also leaves ``path`` whole. The temporary name keeps ``path``'s suffix, for writers that
    choose the format by it (``savefig``). An ``OSError`` with which the folder or its disk
    refuses the write (:func:`refuses_write`: full, read-only, no permission) becomes a
    :class:`StoreError` naming ``path``; any other (a name the file system cannot take, say)
    is raised as it is: it is no fault of the disk.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "summary.csv"
    >>> with replacing(target) as tmp:
    ...     _ = tmp.write_text("a,b\\n")
    >>> target.read_text()
    'a,b\\n'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        # an OSError naming no errno (some writers raise one for a failed write) counts as the disk's
        if refuses_write(exc) or isinstance(exc, OSError) and exc.errno is None:
            raise store_error(path, exc) from exc
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------- reading
@dataclass
class Scan:
    """What the shards of a records folder hold: the chosen attempt of every finished unit
    (``units``: unit -> (attempt, shard name)), the first error of every attempt whose rows
    carry one (``errors``: attempt -> message) and, when asked for, their rows (``rows``:
    attempt -> the rows read from the chosen shard)."""

    units: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    torn_lines: int = 0
    invalid_markers: int = 0
    #: valid markers of an attempt already read in another shard (a copied shard), skipped
    duplicates: int = 0
    #: units finished with different attempts in more than one shard (shards copied from
    #: another run): unit -> those shards, by name; the first one's attempt is read
    conflicts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: the units each shard holds finished (a unit held by two shards counts in both)
    held: dict[str, int] = field(default_factory=dict)
    #: row shards with rows but no done-marker file (lost): shard -> its rows, none of which count
    unmarked: dict[str, int] = field(default_factory=dict)

    def damage(self) -> str:
        """One line on what the shards hold that could not be used or was there twice
        (``""`` when nothing): torn lines, done markers whose rows do not match, units
        found whole in more than one shard."""
        parts = []
        if self.invalid_markers:
            parts.append(
                f"{self.invalid_markers} done marker(s) whose rows are missing or do not match "
                "(those units are not done: a resume computes them again)"
            )
        if self.torn_lines:
            parts.append(f"{self.torn_lines} unreadable line(s) (torn by a crash or damaged; skipped)")
        if self.unmarked:
            shown = ", ".join(f"{s}.jsonl ({n} rows)" for s, n in sorted(self.unmarked.items()))
            parts.append(
                f"{len(self.unmarked)} row shard(s) without their done-marker file: {shown} "
                "(the .done.jsonl was lost (a writer creates it when it takes the shard): "
                "those rows do not count, and a resume computes their units again)"
            )
        if self.duplicates:
            parts.append(
                f"{self.duplicates} unit(s) found whole in more than one shard (a copied shard?); "
                "each is read once"
            )
        if self.conflicts:
            shards = sorted({s for names in self.conflicts.values() for s in names})
            parts.append(
                f"{len(self.conflicts)} unit(s) finished with different results in more than one "
                f"shard ({', '.join(shards)}; shards copied from another run?): each is read from "
                "the first of its shards by name; move the shards that do not belong to this run "
                "out of the records folder"
            )
        return "; ".join(parts)

    @property
    def failed(self) -> dict[tuple[str, str], str]:
        """Finished units whose chosen attempt is a failure: unit -> that attempt's id."""
        return {u: a for u, (a, _) in self.units.items() if a in self.errors}

    def error(self, unit: tuple[str, str]) -> str | None:
        """The error of ``unit``'s chosen attempt, or None (not finished, or no failure)."""
        chosen = self.units.get(unit)
        return self.errors.get(chosen[0]) if chosen else None


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            for line in f:
                line = line.rstrip(b"\n")
                if line.strip():
                    yield line
    except OSError as exc:
        raise unreadable_shard(path, exc) from exc


def unreadable_shard(path: Path, exc: OSError) -> RunError:
    """The :class:`RunError` for a record shard (or done marker file) that cannot be read
    at all - a folder, a link to nothing, no permission - naming it and saying what to do.

    Unlike a torn line (skipped, and the unit recomputed) a whole shard is not skipped: its
    units may be whole on a disk that is only mounted or permitted otherwise, and a resume or
    report without them would compute or show the run without them."""
    if path.is_dir():
        what = "it is a folder, not a file"
    elif path.is_symlink() and not path.exists():
        what = f"it is a link to {os.readlink(path)}, which does not exist"
    else:
        what = exc.strerror or str(exc)
    return RunError(
        f"cannot read the record shard {path}: {what}; every command on this run reads all of "
        "its shards, so nothing was done: restore the file (or make it readable), or move it out "
        f"of {path.parent} (its units are then computed again on resume)"
    )


def check_shards(records_dir: str | Path) -> None:
    """Raise :func:`unreadable_shard`'s ``RunError`` for the first record shard or done
    marker file of ``records_dir`` that cannot be opened (a run checks this before it loads
    its model)."""
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        return
    rows, done = _shards(records_dir)
    for path in rows + done:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise unreadable_shard(path, exc) from exc


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:  # a torn line, or bytes that are not UTF-8 JSON
        return None


def _shards(records_dir: Path) -> tuple[list[Path], list[Path]]:
    rows = sorted(p for p in records_dir.glob("shard-*.jsonl") if not p.name.endswith(".done.jsonl"))
    return rows, sorted(records_dir.glob("shard-*.done.jsonl"))


def scan(records_dir: str | Path, *, keep_rows: bool = False, only: Collection[str] | None = None) -> Scan:
    """Read and verify every shard of ``records_dir``.

    A done marker counts only if exactly its ``rows`` rows of its attempt are readable *in
    its own shard* (a writer puts a unit's rows and its marker in the same shard) and, when
    it has one, their SHA-256 matches; ``only`` (with ``keep_rows``): keep the rows of
    those analyses alone (the others are still verified). The same attempt found whole in two shards (a shard
    copied over another) is one unit, read once. An attempt that a valid marker
    ``supersedes`` (a failed unit retried) never counts, in whichever shard either lies. Of
    the other valid markers for one unit, those of the first shard by name count (a run
    numbers its shards from ``shard-00000``, so a shard copied in from another run under a
    new number does not replace what this run computed), and within that shard the last one
    read (a unit recomputed after its rows were damaged). ``torn_lines``,
    ``invalid_markers``, ``duplicates`` and ``conflicts`` (units finished with different
    attempts in more than one shard) say what could not be used, was read twice or was
    found twice (:meth:`Scan.damage`); ``held`` counts the units each shard holds."""
    records_dir = Path(records_dir)
    out = Scan()
    if not records_dir.is_dir():
        return out
    row_paths, done_paths = _shards(records_dir)
    counts: dict[tuple[str, str], int] = {}  # (shard, attempt) -> rows read
    hashes: dict[tuple[str, str], Any] = {}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    unit_of: dict[tuple[str, str], tuple[str, str]] = {}  # (shard, attempt) -> its unit
    for path in row_paths:
        shard = path.name.removesuffix(".jsonl")
        for line in _lines(path):
            row = _parse(line)
            attempt = row.get("_attempt") if isinstance(row, dict) else None
            if not isinstance(attempt, str):
                out.torn_lines += 1
                continue
            key = (shard, attempt)
            counts[key] = counts.get(key, 0) + 1
            unit_of.setdefault(key, (str(row.get("sample_id")), str(row.get("analysis"))))
            hashes.setdefault(key, hashlib.sha256()).update(line + b"\n")
            if row.get("error") is not None and key not in errors:
                errors[key] = str(row["error"])
            if keep_rows and (only is None or row.get("analysis") in only):
                rows.setdefault(key, []).append(row)
    valid: list[tuple[tuple[str, str], str, str]] = []
    holds: list[tuple[tuple[str, str], str, str]] = []  # every valid marker, copies too
    superseded: set[str] = set()
    seen: set[str] = set()  # attempts with a valid marker already (in another shard: a copy)
    for path in done_paths:
        shard = path.name.removesuffix(".done.jsonl")
        for line in _lines(path):
            m = _parse(line)
            try:
                unit = (str(m["sample_id"]), str(m["analysis"]))
                attempt, expected = m["_attempt"], int(m["rows"])
            except (TypeError, KeyError, ValueError):
                out.invalid_markers += 1
                continue
            key = (shard, str(attempt))
            ok = counts.get(key, 0) == expected
            if ok and "sha256" in m:
                h = hashes.get(key)
                ok = (h.hexdigest() if h else hashlib.sha256().hexdigest()) == m["sha256"]
            if not ok:
                out.invalid_markers += 1
                continue
            holds.append((unit, str(attempt), shard))
            if attempt in seen:  # the same attempt, whole, in a second shard: read it once
                out.duplicates += 1
                continue
            seen.add(attempt)
            valid.append((unit, attempt, shard))
            if isinstance(m.get("supersedes"), str):
                superseded.add(m["supersedes"])
    found_in: dict[tuple[str, str], list[str]] = {}  # unit -> shards with an attempt of it, by name
    for unit, attempt, shard in valid:  # in shard order (done_paths is sorted by name)
        if attempt in superseded:
            continue
        shards = found_in.setdefault(unit, [])
        if shard not in shards:
            shards.append(shard)
        if shards[0] == shard:  # the first shard's attempts count; in it, the last one read
            out.units[unit] = (attempt, shard)
    out.conflicts = {u: shards for u, shards in found_in.items() if len(shards) > 1}
    marked = {p.name.removesuffix(".done.jsonl") for p in done_paths}
    # rows whose shard has no marker file at all: said apart, unless their unit is finished
    # in the store (a shard written by an old version, its rank killed in its first unit,
    # and the unit done again by the resume)
    for (shard, attempt), n in counts.items():
        if shard not in marked and unit_of[(shard, attempt)] not in out.units:
            out.unmarked[shard] = out.unmarked.get(shard, 0) + n
    held: dict[str, set[tuple[str, str]]] = {shard: set() for shard in marked}
    for unit, attempt, shard in holds:
        if attempt not in superseded:
            held[shard].add(unit)
    out.held = {shard: len(units) for shard, units in held.items()}
    for attempt, shard in out.units.values():
        if (shard, attempt) in errors:
            out.errors[attempt] = errors[(shard, attempt)]
        if keep_rows:
            out.rows[attempt] = rows.get((shard, attempt), [])
    return out


def warn_damage(found: Scan, records_dir: str | Path, *, again: bool = False) -> None:
    """Log what :meth:`Scan.damage` found in ``records_dir``: once per folder and finding
    (a run and its report read the store several times), or ``again`` (a new command
    on the folder: a resume, a merge)."""
    said = found.damage()
    key = (str(records_dir), said)
    if said and (again or key not in _WARNED):
        _WARNED.add(key)
        log.warning("%s: %s", records_dir, said)


_WARNED: set[tuple[str, str]] = set()


def shard_status(run_dir: str | Path) -> dict[str, int]:
    """Finished units each shard file of a run holds (``{"shard-00000": 24, ...}``); a unit
    found in two shards (a copied shard) counts in both (:meth:`Scan.damage` says so)."""
    return dict(sorted(scan(Path(run_dir) / "records").held.items()))


def read_records(run_dir: str | Path) -> pd.DataFrame:
    """Every finished record of a run (all shards), as one DataFrame.

    Units come sorted by (sample id, analysis), each with its rows in the order written, so
    the result does not depend on how many processes wrote the shards."""
    found = scan(Path(run_dir) / "records", keep_rows=True)
    rows = []
    for unit in sorted(found.units):
        rows += found.rows.get(found.units[unit][0], [])
    df = pd.DataFrame(rows)
    return df.drop(columns=["_attempt"]) if "_attempt" in df else df
