"""``RunDir``: the one owner of a run folder's layout.

A run folder holds::

    manifest.json          configuration, provenance, versions, sessions, sample counts
    records/               the record store (append-only shards, see vlmflow.store)
    records.parquet        every finished record, merged (written by the report)
    summary/<name>.csv     summary tables
    figures/<name>.png     figures
    report.html            the interactive report
    pathway_search.json    a pathway search's result (``vlmflow pathways --search``)

Opening the same folder with the same configuration resumes it; another configuration, or
other model weights or annotations (see :mod:`vlmflow.provenance`), is refused. No other
module spells these paths.

>>> run = RunDir("vlmflow-out/flow")
>>> run.summary_path("flow").name
'flow.csv'
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .errors import RunError

if TYPE_CHECKING:
    from .lock import FolderLock
    from .run import RunSummary
    from .store import RecordStore

log = logging.getLogger(__name__)
EVAL = "eval"  # the analysis name of the baseline answer records every run writes


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {
        "vlmflow": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


class RunDir:
    """A run folder: its paths, its manifest, its records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def records_dir(self) -> Path:
        return self.path / "records"

    @property
    def parquet_path(self) -> Path:
        return self.path / "records.parquet"

    @property
    def summary_dir(self) -> Path:
        return self.path / "summary"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def search_path(self) -> Path:
        return self.path / "pathway_search.json"

    def summary_path(self, name: str) -> Path:
        return self.summary_dir / f"{_safe(name)}.csv"

    def figure_path(self, name: str) -> Path:
        """``figures/<name>.png``; ``name`` may hold one folder (``logit-lens/sample-3``)."""
        return self.figures_dir / f"{name}.png"

    def is_run(self) -> bool:
        return self.records_dir.is_dir()

    def require(self) -> RunDir:
        """This folder, or a ``RunError`` if it is not a run folder."""
        if not self.path.exists():
            raise RunError(f"{self.path} is not a run folder: it does not exist")
        if not self.is_run():
            raise RunError(f"{self.path} is not a run folder (no records/)")
        return self

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically (a crash leaves the old one or the new one whole)."""
        from .store import write_text_atomic

        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str))

    def lock(self) -> FolderLock:
        """The run folder's writer lock (held by a run's rank 0; see :mod:`vlmflow.lock`)."""
        from .lock import run_lock

        return run_lock(self.path)

    def config(self) -> dict[str, Any]:
        """The run's configuration (options and every analysis's options)."""
        return self.manifest().get("config", {})

    def open(self, config: dict[str, Any], provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create or resume the run; refuse a different configuration or, when both
        manifests have them, different model weights or dataset fingerprints."""
        from .provenance import mismatches

        self.path.mkdir(parents=True, exist_ok=True)
        canonical = canonical_config(config)
        if self.manifest_path.exists():
            manifest = self.manifest()
            self.refuse_other_config(manifest.get("config", {}), canonical)
            changed = mismatches(manifest.get("provenance", {}), provenance or {})
            if changed:
                raise RunError(
                    f"{self.path} holds a run of other model weights or data "
                    f"(changed: {', '.join(changed)}); use a new --out folder"
                )
            manifest["resumed_at"] = manifest.get("resumed_at", []) + [now()]
            manifest["versions_at_resume"] = versions()
        else:
            self._refuse_orphan_records()
            manifest = {
                "config": canonical,
                "provenance": json.loads(json.dumps(provenance or {}, default=str)),
                "versions": versions(),
                "seeds": {"subsample": config.get("seed")},
                "started_at": now(),
            }
        self.write_manifest(manifest)
        return manifest

    def _refuse_orphan_records(self) -> None:
        """A ``records/`` with record shards or done markers but no manifest (copied from
        another run, or its manifest deleted) would have its units taken as this run's."""
        from .store import _shards

        if not self.records_dir.is_dir():
            return
        rows, done = _shards(self.records_dir)
        found = [p.name for p in rows + done]
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise RunError(
                f"{self.path} has no manifest.json but its records/ holds {len(rows)} record shard(s) "
                f"and {len(done)} done marker file(s) ({shown}) of an unknown run; their units "
                "would be mixed into this run's, so it is refused: use a new --out folder, or "
                "move records/ away"
            )

    def close(
        self,
        summary: RunSummary,
        extra: dict[str, Any] | None = None,
        *,
        ranks: Sequence[RunSummary] = (),
    ) -> None:
        """Record the end of a session: the run's sample counts read from the store (all
        shards and sessions), this session's counts (``summary``, the group's total) and
        each rank's (``ranks``), and ``extra`` keys."""
        manifest = self.manifest()
        manifest["finished_at"] = now()
        manifest.update(extra or {})
        session = {
            "started_at": (manifest.get("resumed_at") or [manifest.get("started_at")])[-1],
            "finished_at": manifest["finished_at"],
            "world_size": max(1, len(ranks)),
            "done": summary.done,
            "skipped_already_done": summary.skipped,
            "kept_failed": summary.kept_failed,
            "failed": len(summary.failed),
            "seconds": round(summary.seconds, 3),
            "ranks": [
                {
                    "rank": r.rank,
                    "done": r.done,
                    "skipped": r.skipped,
                    "failed": len(r.failed),
                    "seconds": round(r.seconds, 3),
                }
                for r in ranks
            ],
        }
        manifest["sessions"] = manifest.get("sessions", []) + [session]
        manifest["samples"] = self.sample_counts(_total(manifest))
        manifest.pop("stopped", None)  # this session ended normally
        self.write_manifest(manifest)

    def record_stop(self, reason: str, total: int | None = None) -> bool:
        """Note in the manifest that a session stopped early (``reason``: Ctrl-C, a full disk)
        and what the store holds finished by then (``samples``, read from every shard).
        Returns whether the manifest could be written; when the disk refuses, the old
        manifest stays whole and the records remain the truth. A manifest without the run's
        configuration (none yet: the run had not opened the folder) is left as it is, since
        counts alone would make the folder refuse the run's own resume."""
        try:
            manifest = self.manifest()
            if "config" not in manifest:
                return False
            manifest["stopped"] = {"at": now(), "reason": reason}
            manifest["samples"] = self.sample_counts(total if total is not None else _total(manifest))
            self.write_manifest(manifest)
        except (OSError, ValueError, RunError) as exc:  # RunError: StoreError, no run folder yet
            log.warning("could not record the stop in %s: %s", self.manifest_path, exc)
            return False
        return True

    # ------------------------------------------------------------------ records
    def store(self, rank: int = 0) -> RecordStore:
        """The record store's shard ``rank`` of this run."""
        from .store import RecordStore

        return RecordStore(self.path, rank)

    def records(self) -> pd.DataFrame:
        """Every finished record of the run (all shards); ``RunError`` if the folder is not a
        run folder (a run that has written no records yet reads as empty)."""
        from .store import read_records

        if not self.manifest_path.exists():
            self.require()
        return read_records(self.path)

    def sample_counts(self, total: int | None = None, *, warn_again: bool = False) -> dict[str, Any]:
        """The run's samples by state, from its store (every shard): ``done`` (every unit the
        run's configuration asks for - ``eval`` and each analysis - finished without error),
        ``failed`` (a unit's latest attempt failed) with each one's first error in
        ``failures``, and ``missing`` (not yet analysed, or only part of its units finished
        when a run stopped, of ``total`` selected) - what a resume would still do."""
        from .store import scan, warn_damage

        found = scan(self.records_dir)
        warn_damage(found, self.records_dir, again=warn_again)  # torn lines, markers that fail
        names = [EVAL, *self.config().get("analyses", {})]
        if len(names) == 1:  # no configuration (a bare store): the analyses it holds
            names += sorted({a for _, a in found.units} - {EVAL})
        units: dict[str, set[str]] = {}
        for sid, analysis in found.units:
            units.setdefault(sid, set()).add(analysis)
        failures: dict[str, str] = {}
        done = 0
        for sid in sorted(units):
            errors = [e for n in [*names, *sorted(units[sid])] if (e := found.error((sid, n))) is not None]
            if errors:
                failures[sid] = errors[0]
            elif all(n in units[sid] for n in names):
                done += 1
        counts: dict[str, Any] = {"total": total, "done": done, "failed": len(failures), "failures": failures}
        if total is not None:
            counts["missing"] = max(0, total - done - len(failures))
        return counts

    def refuse_other_config(self, old: dict[str, Any], new: dict[str, Any], hint: str = "") -> None:
        """A :class:`RunError` naming the keys in which this folder's configuration ``old``
        differs from ``new`` (both canonical, see :func:`canonical_config`); ``hint`` ends it."""
        if old != new:
            diff = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
            raise RunError(
                f"{self.path} holds a run with another configuration (differs in: {', '.join(diff)}); "
                f"use a new --out folder or the same options to resume{hint}"
            )

    def counts(self) -> dict[str, Any]:
        """:meth:`sample_counts` of the run's selected total: what its records hold now (the
        manifest's ``samples`` may be stale, e.g. after a killed resume)."""
        return self.sample_counts(_total(self.manifest()))

    def merge(self) -> dict[str, Any]:
        """Merge the record shards into the manifest's counts, summaries and report.

        A multi-process run merges by itself at the end (rank 0, after every rank is done);
        this is for one whose ranks ended separately, or whose rank 0 stopped before
        merging. Returns the report's result plus ``shards`` and ``samples``.
        """
        from .report import finalize
        from .store import shard_status

        if not self.is_run() or not self.manifest_path.exists():
            raise RunError(f"{self.path} is not a run folder (it needs manifest.json and records/)")
        with self.lock():  # not while a run still writes this folder
            manifest = self.manifest()
            shards = shard_status(self.path)
            manifest["samples"] = self.sample_counts(_total(manifest), warn_again=True)
            manifest["merged_at"] = now()
            manifest["shards"] = shards
            self.write_manifest(manifest)
            return {**finalize(self), "shards": shards, "samples": manifest["samples"]}

    # ------------------------------------------------------------------ search results
    def write_search(self, result: dict[str, Any]) -> None:
        from .store import write_text_atomic

        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.search_path, json.dumps(result, indent=2))

    def read_search(self) -> dict[str, Any] | None:
        return json.loads(self.search_path.read_text()) if self.search_path.exists() else None


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the manifest stores it (through JSON: tuples as lists, others as text)."""
    return json.loads(json.dumps(config, default=str))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _total(manifest: dict[str, Any]) -> int | None:
    """The run's number of selected samples: written when the run opens (and at its close);
    a folder from before that has it in its data provenance."""
    total = manifest.get("num_samples")
    if total is None:
        total = ((manifest.get("provenance") or {}).get("data") or {}).get("num_samples")
    return int(total) if isinstance(total, int) else None
