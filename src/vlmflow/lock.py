"""One writer per run folder (and per record shard): an advisory ``flock`` that names its holder.

A :class:`FolderLock` is an exclusive, non-blocking ``fcntl.flock`` on a small file. The
operating system releases it when the holding process exits for any reason (a crash, a
SIGKILL, a power cut ends the process and with it the lock), so a crashed run never
blocks its own resume, and no stale-lock clean-up is ever needed. The holder writes who it
is (pid, host, start time, command) into the file, so a second process is refused with a
message naming the holder instead of computing everything a second time.

A multi-process (``torchrun``) run takes the run lock once, on rank 0, for the whole
group (see :func:`vlmflow.api.run`); each rank then locks only its own record shard
(:class:`vlmflow.store.RecordStore`), so the ranks of one group never refuse each other,
while a second group on the same folder is refused by rank 0's lock before any rank
starts.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with FolderLock(f"{folder}/run.lock", what=folder):
    ...     FolderLock(f"{folder}/run.lock", what=folder).acquire()
    Traceback (most recent call last):
    ...
    vlmflow.errors.RunError: ... is in use by another vlmflow process (pid ...
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from .errors import RunError

log = logging.getLogger(__name__)


def holder_info() -> dict[str, Any]:
    """Who this process is, as written into a lock it holds."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:500],
    }


def describe_holder(path: str | Path) -> str:
    """``pid 123 on host, since 2026-...: vlmflow flow ...`` from a lock file (best effort)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        text = f"pid {info['pid']} on {info['host']}, since {info['started']}"
        return text + (f": {info['command']}" if info.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown (it has not written its name yet)"


class FolderLock:
    """An exclusive advisory lock on ``path`` for the life of this object (or ``with`` block).

    ``what`` names the thing protected in the refusal message. With ``wait`` a held lock
    is waited for (one log line names the holder) instead of refused. :meth:`acquire` is
    idempotent; :meth:`release` is safe to call twice. Where ``fcntl`` does not exist
    (Windows) the lock is a no-op.
    """

    def __init__(self, path: str | Path, *, what: str | Path | None = None, wait: bool = False) -> None:
        self.path = Path(path)
        self.what = str(what or self.path.parent)
        self.wait = wait
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> FolderLock:
        """Take the lock, or (without ``wait``) raise :class:`RunError` naming the process
        that holds it."""
        if self._file is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise RunError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if self.wait:
                self._wait(f)
            else:
                f.close()
                raise RunError(
                    f"{self.what} is in use by another vlmflow process ({describe_holder(self.path)}); "
                    "wait for it to finish or stop it, or use another --out folder (a crashed run "
                    "holds no lock: its folder resumes at once)"
                ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(holder_info()))
            f.flush()
        except OSError:
            pass  # a full disk must not stop a resume; the lock itself is held
        self._file = f
        return self

    def _wait(self, f: IO[str]) -> None:
        """Block until the holder of ``f``'s lock lets go (closing ``f`` if interrupted)."""
        import fcntl

        holder = describe_holder(self.path)
        log.warning("waiting for %s: another vlmflow process holds it (%s)", self.what, holder)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except BaseException:
            f.close()
            raise

    def release(self) -> None:
        if self._file is None:
            return
        import fcntl

        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # the OS would release it anyway; this closes the file early
        try:
            self.release()
        except Exception:
            pass


def run_lock(out: str | Path) -> FolderLock:
    """The lock of run folder ``out`` (``out/run.lock``), held by a run's rank 0."""
    return FolderLock(Path(out) / "run.lock", what=Path(out))
