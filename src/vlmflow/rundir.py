"""``RunDir``: the one owner of a run folder's layout.

A run folder holds::

    manifest.json          configuration, provenance, versions, sessions, sample counts
    records/               the record store (append-only shards, see vlmflow.store)
    records/run.json       a copy of the manifest's configuration, provenance, dtype and
                           total, from which a damaged or lost manifest is rebuilt
    records.parquet        every finished record, merged (written by the report)
    summary/<name>.csv     summary tables
    figures/<name>.png     figures (per-sample ones in a folder, named by :func:`file_stem`)
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

import hashlib
import json
import logging
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .errors import RunError

if TYPE_CHECKING:
    from .analyses.base import Analysis
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
    def identity_path(self) -> Path:
        """``records/run.json``: what the records were computed with (see :data:`IDENTITY`)."""
        return self.records_dir / "run.json"

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
        """``figures/<name>.png``; ``name`` may hold one folder (``logit-lens/sample-3``).
        A name made from data (a sample id) goes through :func:`file_stem` first."""
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"figure name {name!r} would leave {self.figures_dir}")
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
        """The manifest (``{}`` when there is none); a :class:`RunError` naming the file and
        what to do when it cannot be read (damaged: cut short, edited, not JSON)."""
        if not self.manifest_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
            if not isinstance(manifest, dict):
                raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
        except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RunError(
                f"{self.manifest_path} cannot be read ({_first_line(exc)}); {self._rebuild_advice()}"
            ) from None
        return manifest

    def frame_policy_rule(self, manifest: dict[str, Any] | None = None) -> str:
        """How this folder's samples chose their frame policy (see ``Adapter.policy_for``):
        ``"chosen"``, a policy the user chose wins over a benchmark's own (LongVideoBench's
        ``lvb``), or ``"benchmark"``, a benchmark's own won (vlmflow before the choice won:
        its ``computed_in.frame_policy`` is then the adapter's, not the one the samples
        used). Read from ``computed_in.frame_policy_rule`` (written for ``"benchmark"``
        only); a folder without it that records a frame policy and whose eval records predate
        their ``frame_policy`` column was started under ``"benchmark"``."""
        from .store import scan

        manifest = self.manifest() if manifest is None else manifest
        computed = manifest.get("computed_in", {})
        rule = computed.get("frame_policy_rule")
        if rule in FRAME_POLICY_RULES:
            return str(rule)
        if "frame_policy" not in computed:  # a new folder, or one no run has opened
            return "chosen"
        rows = scan(self.records_dir, keep_rows=True, only=(EVAL,)).rows.values()  # eval rows alone
        evals = [
            row for unit in rows for row in unit if row.get("analysis") == "eval" and row.get("error") is None
        ]
        if not evals or any("frame_policy" in row for row in evals):  # nothing sampled yet, or by now's rule
            return "chosen"
        return "benchmark"

    def _rebuild_advice(self) -> str:
        if self._identity() is not None:
            return (
                f"rebuild it from the records with `vlmflow merge {self.path}` (its configuration is kept "
                f"in {self.identity_path}), or re-run the same command: it rebuilds it and resumes, "
                "reusing every finished unit"
            )
        return (
            "the run's configuration was kept only there (this folder is from before records/run.json "
            "kept a copy), so it cannot be rebuilt from the records: put back a copy of it, or start "
            "again in a new --out folder"
        )

    def _identity(self) -> dict[str, Any] | None:
        """``records/run.json`` when it holds a configuration, else None."""
        try:
            identity = json.loads(self.identity_path.read_bytes())
        except (OSError, ValueError):
            return None
        return identity if isinstance(identity, dict) and isinstance(identity.get("config"), dict) else None

    def _damaged(self) -> bool:
        try:
            self.manifest()
        except RunError:
            return True
        return False

    def rebuild_manifest(self) -> dict[str, Any]:
        """A manifest rebuilt from ``records/run.json`` (the configuration, provenance, dtype and
        total) and the records (the sample counts), written over a damaged or missing one; a
        damaged one is kept beside it as ``manifest.json.damaged``. ``RunError`` if there is no
        copy to rebuild from."""
        identity = self._identity()
        if identity is None:
            raise RunError(f"{self.manifest_path} cannot be rebuilt: {self._rebuild_advice()}")
        if self.manifest_path.exists():
            self.manifest_path.replace(self.manifest_path.with_name("manifest.json.damaged"))
        manifest = {
            **{k: identity[k] for k in IDENTITY if k in identity},
            "seeds": {"subsample": identity["config"].get("seed")},
            "versions": versions(),
            "rebuilt_at": now(),
        }
        log.warning(
            "%s was damaged or missing: rebuilt from %s and the records",
            self.manifest_path,
            self.identity_path,
        )
        self.write_manifest(manifest)
        manifest["samples"] = self.sample_counts(_total(manifest))  # counted under its configuration
        self.write_manifest(manifest)
        return manifest

    def recover_manifest(self) -> None:
        """Rebuild a damaged or missing manifest (:meth:`rebuild_manifest`) when
        ``records/run.json`` keeps the run's configuration; otherwise leave it as it is."""
        if self._identity() is not None and (not self.manifest_path.exists() or self._damaged()):
            self.rebuild_manifest()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically (a crash leaves the old one or the new one whole),
        and keep ``records/run.json`` (its configuration, provenance, dtype, total) up to date."""
        from .store import write_text_atomic

        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str))
        self._keep_identity(manifest)

    def _keep_identity(self, manifest: dict[str, Any]) -> None:
        """Write ``records/run.json`` from ``manifest`` when what it keeps changed."""
        from .store import write_text_atomic

        identity = json.loads(json.dumps({k: manifest[k] for k in IDENTITY if k in manifest}, default=str))
        if "config" in identity and self._identity() != identity:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.identity_path, json.dumps(identity, indent=2))

    def restore_manifest(self, before: bytes | None) -> None:
        """Put back the manifest as it was (``before``), or remove it, and its copy in
        ``records/run.json`` unless records hold units, when there was none."""
        from .store import _shards, write_text_atomic

        if before is None:
            self.manifest_path.unlink(missing_ok=True)
            if not any(_shards(self.records_dir)):  # a copy that describes records stays
                self.identity_path.unlink(missing_ok=True)
                try:
                    self.records_dir.rmdir()  # made for the copy: gone with it (kept if not empty)
                except OSError:
                    pass
            return
        write_text_atomic(self.manifest_path, before.decode())
        try:
            self._keep_identity(json.loads(before))
        except (ValueError, TypeError, AttributeError):
            pass  # it was damaged before: as it was

    def lock(self) -> FolderLock:
        """The run folder's writer lock (held by a run's rank 0; see :mod:`vlmflow.lock`)."""
        from .lock import run_lock

        return run_lock(self.path)

    def config(self) -> dict[str, Any]:
        """The run's configuration (options and every analysis's options); from
        ``records/run.json`` when the manifest is damaged."""
        try:
            return self.manifest().get("config", {})
        except RunError:
            identity = self._identity()
            if identity is None:
                raise
            return identity["config"]

    def data_specs(self) -> list[str]:
        """The specs the run's samples can be loaded again from (the report's overlays): the
        dataset spec with its path made absolute as the run resolved it (``provenance.data.path``,
        so it loads from any working folder), then the spec as typed (``config.data``; all a
        folder from before the path was recorded has)."""
        manifest = self.manifest()
        typed = manifest.get("config", {}).get("data")
        where = ((manifest.get("provenance") or {}).get("data") or {}).get("path")
        specs = [f"{typed.partition(':')[0]}:{where}"] if isinstance(typed, str) and where else []
        return specs + ([typed] if isinstance(typed, str) and typed not in specs else [])

    def open(
        self,
        config: dict[str, Any],
        provenance: dict[str, Any] | None = None,
        analyses: Sequence[Analysis] = (),
    ) -> dict[str, Any]:
        """Create or resume the run; refuse a different configuration or, when both
        manifests have them, different model weights or dataset fingerprints, or records
        computed by another version of one of ``analyses`` (:meth:`refuse_other_versions`).
        Records the versions of ``analyses`` in ``computed_in.analysis_versions``."""
        from .store import check_shards

        self.path.mkdir(parents=True, exist_ok=True)
        canonical = canonical_config(config)
        check_shards(self.records_dir)  # a shard that cannot be read: refused before the model loads
        self.recover_manifest()  # records that keep their configuration: resumed as a run
        if self.manifest_path.exists():
            manifest = self.manifest()
            self.refuse_other_config(manifest.get("config", {}), canonical)
            self.refuse_other_provenance(manifest.get("provenance", {}), provenance or {})
            self.refuse_other_versions(analyses, manifest)
            manifest["config"] = canonical  # the same run; layer options as this version writes them
            where = ((provenance or {}).get("data") or {}).get("path")
            if where:  # the same data (its fingerprints match), read from there this time
                known = manifest.setdefault("provenance", {})
                known["data"] = {**(known.get("data") or {}), "path": where}
            manifest["resumed_at"] = manifest.get("resumed_at", []) + [now()]
            manifest["versions_at_resume"] = versions()
        else:
            self.refuse_orphan_records()
            manifest = {
                "config": canonical,
                "provenance": json.loads(json.dumps(provenance or {}, default=str)),
                "versions": versions(),
                "seeds": {"subsample": config.get("seed")},
                "started_at": now(),
            }
        if analyses:  # what the records are computed by, from now on (an older folder: recorded now)
            computed = manifest.setdefault("computed_in", {})
            computed["analysis_versions"] = {
                **computed.get("analysis_versions", {}),
                **{a.name: a.version for a in analyses},
            }
        self.write_manifest(manifest)
        return manifest

    def refuse_other_versions(
        self, analyses: Sequence[Analysis], manifest: dict[str, Any] | None = None, hint: str = ""
    ) -> None:
        """A :class:`RunError` when this folder holds records of one of ``analyses`` computed by
        another version of it (``Analysis.version``; the folder's
        ``computed_in.analysis_versions``, an analysis it does not name counting as version 1,
        as a folder from before versions were recorded): one line naming the analysis, both
        versions and what changed between them (``Analysis.changes``), saying to write to a
        new --out. Adding records is what is refused: ``vlmflow report`` and ``merge`` still
        read the folder. ``hint`` ends it."""
        manifest = self.manifest() if manifest is None else manifest
        recorded = (manifest.get("computed_in") or {}).get("analysis_versions") or {}
        for analysis in analyses:
            old, new = recorded.get(analysis.name, 1), analysis.version
            if old == new:
                continue
            unrecorded = " (the folder records no version: started before vlmflow recorded them)"
            how = f"version {old} of that analysis{'' if analysis.name in recorded else unrecorded}"
            if new > old:
                changes = analysis.changes
                notes = [f"{v}: {changes[v]}" for v in range(old + 1, new + 1) if v in changes]
                what = f" (changed in version {'; '.join(notes)})" if notes else ""
            else:
                what = " (the folder was started by a newer vlmflow)"
            raise RunError(
                f"{self.path} holds {analysis.name} records computed by {how}, but this "
                f"vlmflow computes version {new}{what}; new records would be mixed with the folder's in "
                f"one table, so adding to it is refused: write to a new --out (vlmflow report and "
                f"merge still read this folder){hint}"
            )

    def refuse_orphan_records(self, hint: str = "") -> None:
        """A ``records/`` with record shards or done markers but no manifest (copied from
        another run, or its manifest deleted) would have its units taken as this run's;
        ``hint`` ends the refusal."""
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
                f"move records/ away{hint}"
            )

    def close(
        self,
        summary: RunSummary,
        extra: dict[str, Any] | None = None,
        *,
        ranks: Sequence[RunSummary] = (),
        session: dict[str, Any] | None = None,
    ) -> None:
        """Record the end of a session: the run's sample counts read from the store (all
        shards and sessions), this session's counts (``summary``, the group's total) and
        each rank's (``ranks``), ``extra`` keys, and ``session`` keys in this session's
        entry (provenance such as ``paper``)."""
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
            **(session or {}),
        }
        manifest["sessions"] = manifest.get("sessions", []) + [session]
        manifest["samples"] = self.sample_counts(_total(manifest))
        manifest.pop("stopped", None)  # this session ended normally
        self.write_manifest(manifest)

    def record_stop(
        self, reason: str, total: int | None = None, *, world_size: int = 1, closed: bool = False
    ) -> bool:
        """Note in the manifest that a session stopped early (``reason``: Ctrl-C, a full disk)
        and what the store holds finished by then (``samples``, read from every shard): in
        ``stopped`` (until a later session ends normally) and in the session's entry of
        ``sessions`` (kept: ``stopped`` with the reason, ``world_size``, and the run's sample
        counts at the stop). Returns whether the manifest could be written; when the disk
        refuses, the old manifest stays whole and the records remain the truth. A manifest
        without the run's configuration (none yet: the run had not opened the folder) is
        left as it is, since counts alone would make the folder refuse the run's own resume.

        A session that :meth:`close` recorded already (``closed``: a stop while the report was
        written, after every unit finished) gets no second entry and no ``stopped``: its entry gets
        ``report`` saying the report was not written and that ``vlmflow report`` writes it."""
        try:
            manifest = self.manifest()
            if "config" not in manifest:
                return False
            at = now()
            started = (manifest.get("resumed_at") or [manifest.get("started_at")])[-1]
            last = (manifest.get("sessions") or [{}])[-1]
            if closed and last.get("started_at") == started and "finished_at" in last:
                # this session was closed already (every unit finished, the counts written):
                # only its report was stopped. Not a stopped run: its entry says so instead
                last["report"] = f"not written ({reason}): `vlmflow report {self.path}` writes it"
                self.write_manifest(manifest)
                return True
            manifest["stopped"] = {"at": at, "reason": reason}
            counts = self.sample_counts(total if total is not None else _total(manifest))
            manifest["samples"] = counts
            session = {
                "started_at": started,
                "stopped_at": at,
                "stopped": reason,
                "world_size": max(1, world_size),
                "samples": {k: counts.get(k) for k in ("done", "failed", "missing")},
            }
            manifest["sessions"] = manifest.get("sessions", []) + [session]
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
        differs from ``new`` (both canonical, see :func:`canonical_config`), each with both
        values (``seed (folder: 0, now: 42)``), and within a nested one (``analyses``) each
        differing option with both values (:func:`config_differences`); ``hint`` ends it.
        Informational keys (:data:`INFORMATIONAL`) are no part of the comparison, and
        ``old``'s layer options and tasks are read as this version writes them
        (:func:`normalized_layers`, :func:`normalized_tasks`), so a folder started with
        ``layers=range(...)``, an unsorted list, or tasks by paper id resumes."""
        old, new = identity_config(old), identity_config(new)
        if old.get("dtype") is None or new.get("dtype") is None:
            # an unset dtype resolves per device (float32 on a CPU): whether it is the one the
            # other side names is the dtype the records were computed in, which the run checks
            # once the model is loaded (computed_in); here it is no difference
            old.pop("dtype", None)
            new.pop("dtype", None)
        if old != new:
            old = normalized_tasks(normalized_layers(old), new)
        if old != new:
            diff = [
                f"{k} ({'; '.join(config_differences(old[k], new[k])[:6])})"
                if isinstance(old.get(k), dict) and isinstance(new.get(k), dict)
                else f"{k} (folder: {_show(old[k]) if k in old else 'not set'}, "
                f"now: {_show(new[k]) if k in new else 'not set'})"
                for k in sorted(set(new) | set(old))
                if new.get(k) != old.get(k)
            ]
            raise RunError(
                f"{self.path} holds a run with another configuration (differs in: {', '.join(diff)}); "
                f"use a new --out folder or the same options to resume{hint}"
            )

    def refuse_other_provenance(self, old: dict[str, Any], new: dict[str, Any], hint: str = "") -> None:
        """A :class:`RunError` naming the fingerprints (see :mod:`vlmflow.provenance`) in
        which this folder's ``old`` model weights or data differ from ``new``; ``hint`` ends it."""
        from .provenance import mismatches

        changed = mismatches(old, new)
        if changed:
            raise RunError(
                f"{self.path} holds a run of other model weights or data "
                f"(changed: {', '.join(changed)}); use a new --out folder{hint}"
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

        if not self.is_run() or not (self.manifest_path.exists() or self._identity() is not None):
            raise RunError(f"{self.path} is not a run folder (it needs manifest.json and records/)")
        with self.lock() as lock:  # not while a run still writes this folder
            self.recover_manifest()
            manifest = self.manifest()  # damaged and nothing to rebuild it from: says so
            shards = shard_status(self.path)
            manifest["samples"] = self.sample_counts(_total(manifest), warn_again=True)
            manifest["merged_at"] = now()
            manifest["shards"] = shards
            self.write_manifest(manifest)
            return {**finalize(self, lock=lock), "shards": shards, "samples": manifest["samples"]}

    # ------------------------------------------------------------------ search results
    def write_search(self, result: dict[str, Any]) -> None:
        from .store import write_text_atomic

        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.search_path, json.dumps(result, indent=2))

    def read_search(self) -> dict[str, Any] | None:
        return json.loads(self.search_path.read_text()) if self.search_path.exists() else None


#: how a folder's samples chose their frame policy (:meth:`RunDir.frame_policy_rule`)
FRAME_POLICY_RULES = ("chosen", "benchmark")

#: the manifest keys ``records/run.json`` keeps a copy of: what the records were computed with
IDENTITY = ("config", "provenance", "computed_in", "num_samples")


#: configuration keys that say how the options were chosen, not what was computed: ``paper``
#: (``--paper``'s preset; stored in the configuration by folders before 2026-12-03, and in
#: each session's entry since) never makes two identical configurations differ
INFORMATIONAL = ("paper",)


#: dtype aliases as the manifest's configuration stores them since 2026-12-03 (folders
#: before then stored what the caller gave: ``"fp32"``, ``"bf16"``)
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def canonical_dtype(dtype: Any) -> Any:
    """``dtype`` by its canonical name (``"fp32"`` -> ``"float32"``); others as they are."""
    return DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without its :data:`INFORMATIONAL` keys, its ``dtype`` by its canonical
    name: what a resume must match."""
    out = {k: v for k, v in config.items() if k not in INFORMATIONAL}
    if "dtype" in out:
        out["dtype"] = canonical_dtype(out["dtype"])
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the manifest stores it (through JSON: tuples as lists, others as text)."""
    return json.loads(json.dumps(config, default=str))


#: how ``json.dumps(..., default=str)`` wrote a ``range`` (``"range(0, 4)"``, ``"range(0, 8, 2)"``)
_RANGE_TEXT = re.compile(r"range\((-?\d+), (-?\d+)(?:, (-?\d+))?\)")


def _show(value: Any) -> str:
    """A configuration value in a refusal: JSON (text as it is), cut at 40 characters."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def normalized_tasks(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with its ``tasks`` as ``new`` names them when both select the same tasks of
    the same dataset (:func:`~vlmflow.data.registry.selected_tasks`). Runs store the tasks
    resolved (names, sorted, once each); folders before 2026-12-03 stored them as typed
    (``["1"]``, repeated, in the user's order), which resume with any selection of the same
    tasks. A selection that cannot be resolved (the dataset is gone) is left as it is."""
    from .data.registry import selected_tasks
    from .errors import VlmflowError

    before, now = old.get("tasks"), new.get("tasks")
    if before == now or not isinstance(before, list) or not isinstance(now, list) or not before or not now:
        return old
    if old.get("data") != new.get("data") or not isinstance(new.get("data"), str):
        return old
    try:
        same = selected_tasks(new["data"], before) == selected_tasks(new["data"], now)
    except (VlmflowError, OSError, ValueError):
        return old
    return {**old, "tasks": now} if same else old


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Where configuration ``new`` differs from ``old`` (a folder's), one entry per differing
    option, nested ones by dotted path: ``"flow-screen.control: 2 vs 5"`` (the folder's value
    first); an option one side lacks says which (``"only in the folder"``, ``"only given
    now"``)."""

    out = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        if key not in new:
            out.append(f"{path}: only in the folder")
        elif key not in old:
            out.append(f"{path}: only given now")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            out += config_differences(old[key], new[key], f"{path}.")
        elif old[key] != new[key]:
            out.append(f"{path}: {_show(old[key])} vs {_show(new[key])}")
    return out


def normalized_layers(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every analysis's layer options (those parsed by
    :func:`~vlmflow.cuts.parse_layers`: ``layers``, ``compare_layers``) in the form the
    analyses now store: a sorted list without repeats. Versions before they were normalised
    stored what the caller gave: ``layers=range(0, 4)`` as the text ``"range(0, 4)"``, a list
    in the caller's order. A value that cannot be read as layers is left as it is."""
    import dataclasses

    from .analyses.base import ANALYSES, as_layers, ordered
    from .cuts import parse_layers
    from .errors import PlanError

    analyses = config.get("analyses")
    if not isinstance(analyses, dict):
        return config
    ordered()  # every analysis registered
    out = {}
    for name, options in analyses.items():
        if name not in ANALYSES or not isinstance(options, dict):
            out[name] = options
            continue
        cls = ANALYSES.get(name)
        fields = [
            f.name
            for f in (dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ())
            if (f.metadata.get("option") or {}).get("parse") is parse_layers
        ]
        options = dict(options)
        for key in fields:
            value = options.get(key)
            if value is None:
                continue
            if isinstance(value, str) and (m := _RANGE_TEXT.fullmatch(value)):
                value = range(*(int(g) for g in m.groups() if g is not None))
            try:
                options[key] = list(as_layers(value, key) or ())
            except (PlanError, TypeError, ValueError):
                pass
        out[name] = options
    return {**config, "analyses": out}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# a text used as it is for a file name: ASCII letters, digits, "-", "_", "."; not led by a
# dot; short; and not ending like a hashed name (below), so no two texts share a file
_PLAIN_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_HASHED_STEM = re.compile(r"(?:.*-)?[0-9a-f]{10}")  # what the hashed form looks like


def file_stem(text: str) -> str:
    """A file name (without suffix) for ``text``, e.g. a sample id in a per-sample figure's
    name, that stays in its folder on any file system: ``text`` itself when it is a plain
    name (ASCII letters, digits, ``-``, ``_``, ``.``, at most 80 characters, not led by a
    dot), else a slug of it (other characters as ``_``, at most 60) and ``-`` and the first
    10 hex digits of its SHA-256, so two ids never share a file. The figure's caption keeps
    the text itself.

    >>> file_stem("sample-3"), file_stem("../../x")
    ('sample-3', 'x-9cdf6a5010')

    A plain id that looks like a hashed stem (a bare digest: an id with no ASCII letter or
    digit gets one) is hashed too, so it cannot take another id's file.
    """
    if _PLAIN_STEM.fullmatch(text) and not _HASHED_STEM.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60].rstrip("_")
    return f"{slug}-{digest}" if slug else digest


def _total(manifest: dict[str, Any]) -> int | None:
    """The run's number of selected samples: written when the run opens (and at its close);
    a folder from before that has it in its data provenance."""
    total = manifest.get("num_samples")
    if total is None:
        total = ((manifest.get("provenance") or {}).get("data") or {}).get("num_samples")
    return int(total) if isinstance(total, int) else None
