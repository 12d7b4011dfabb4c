"""The run loop: samples -> prepared inputs -> engine -> analyses -> records in the store.

A run folder holds ``manifest.json`` (the configuration and provenance), ``records/``
(the store) and, once finished, ``summary/``, ``figures/`` and ``report.html``. Running
the same command into the same folder resumes it; a different configuration, or other
model weights or annotations (see :mod:`vlmflow.provenance`), is refused. A sample that
fails is recorded with its error and the run goes on. With several processes each rank
runs :func:`run_samples` on its share of the samples into its own record shard, and rank 0
alone opens and closes the run (see :mod:`vlmflow.distributed`).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analyses.base import Baseline, read_answer
from .engine import Engine
from .errors import RunError, VlmflowError
from .models.base import Adapter
from .sample import Sample
from .store import RecordStore, StoreError, is_environment_error, read_records, store_error, write_text_atomic

log = logging.getLogger(__name__)
EVAL = "eval"


@dataclass
class RunSummary:
    """Counts of one session of a run: of one rank's shard, or of all ranks (:meth:`combine`)."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    rank: int = 0

    @property
    def rate(self) -> float:
        """Samples analysed (done or failed) per second of the sample loop."""
        n = self.done + len(self.failed)
        return n / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def combine(cls, parts: Sequence[RunSummary]) -> RunSummary:
        """The whole group's counts: sums, all failures, and the slowest rank's seconds."""
        failed: dict[str, str] = {}
        for p in parts:
            failed.update(p.failed)
        return cls(
            done=sum(p.done for p in parts),
            skipped=sum(p.skipped for p in parts),
            failed=failed,
            seconds=max((p.seconds for p in parts), default=0.0),
        )


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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def open_run(out: Path, config: dict[str, Any], provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create or resume the run folder ``out``; refuse a different configuration or, when
    both manifests have them, different model weights or dataset fingerprints."""
    from .provenance import mismatches

    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    canonical = json.loads(json.dumps(config, default=str))
    if path.exists():
        manifest = json.loads(path.read_text())
        if manifest.get("config") != canonical:
            diff = sorted(
                k
                for k in set(canonical) | set(manifest.get("config", {}))
                if canonical.get(k) != manifest.get("config", {}).get(k)
            )
            raise RunError(
                f"{out} holds a run with another configuration (differs in: {', '.join(diff)}); "
                "use a new --out folder or the same options to resume"
            )
        changed = mismatches(manifest.get("provenance", {}), provenance or {})
        if changed:
            raise RunError(
                f"{out} holds a run of other model weights or data (changed: {', '.join(changed)}); "
                "use a new --out folder"
            )
        manifest["resumed_at"] = manifest.get("resumed_at", []) + [now()]
        manifest["versions_at_resume"] = versions()
    else:
        manifest = {
            "config": canonical,
            "provenance": json.loads(json.dumps(provenance or {}, default=str)),
            "versions": versions(),
            "seeds": {"subsample": config.get("seed")},
            "started_at": now(),
        }
    write_text_atomic(path, json.dumps(manifest, indent=2))
    return manifest


def close_run(
    out: Path,
    summary: RunSummary,
    extra: dict[str, Any] | None = None,
    *,
    ranks: Sequence[RunSummary] = (),
) -> None:
    """Record the end of a session in the manifest: the run's sample counts read from the
    store (all shards and sessions), this session's counts (``summary``, the group's total)
    and each rank's (``ranks``), and ``extra`` keys."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["finished_at"] = now()
    manifest.update(extra or {})
    session = {
        "started_at": (manifest.get("resumed_at") or [manifest.get("started_at")])[-1],
        "finished_at": manifest["finished_at"],
        "world_size": max(1, len(ranks)),
        "done": summary.done,
        "skipped_already_done": summary.skipped,
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
    manifest["samples"] = sample_counts(out, manifest.get("num_samples"))
    manifest.pop("stopped", None)  # this session ended normally
    write_text_atomic(path, json.dumps(manifest, indent=2))


def record_stop(out: Path, reason: str, total: int | None = None) -> bool:
    """Note in the manifest that a session stopped early (``reason``: Ctrl-C, a full disk)
    and what the store holds finished by then (``samples``, read from every shard). Returns
    whether the manifest could be written; when the disk refuses, the old manifest stays
    whole and the records remain the truth."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        manifest["stopped"] = {"at": now(), "reason": reason}
        manifest["samples"] = sample_counts(out, total if total is not None else manifest.get("num_samples"))
        write_text_atomic(path, json.dumps(manifest, indent=2))
    except (OSError, ValueError, StoreError) as exc:
        log.warning("could not record the stop in %s: %s", path, exc)
        return False
    return True


def sample_counts(out: Path, total: int | None = None) -> dict[str, Any]:
    """The run's samples by state, from its records (every shard): ``done`` (analysed without
    error), ``failed`` with each one's first error in ``failures``, and ``missing`` (not yet
    analysed, of ``total`` selected) - what a resume would still do."""
    records = read_records(out)
    failures: dict[str, str] = {}
    done = 0
    if not records.empty:
        errors = records[records["error"].notna()] if "error" in records else records.iloc[:0]
        for sid, err in zip(errors["sample_id"], errors["error"], strict=True):
            failures.setdefault(str(sid), str(err))
        ev = records[records["analysis"] == EVAL]
        done = len(set(ev["sample_id"].astype(str)) - set(failures))
    counts: dict[str, Any] = {"total": total, "done": done, "failed": len(failures), "failures": failures}
    if total is not None:
        counts["missing"] = max(0, total - done - len(failures))
    return counts


def run_samples(
    adapter: Adapter,
    samples: Sequence[Sample],
    analyses: Sequence[Any],
    out: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    max_batch_tokens: int | None = None,
) -> RunSummary:
    """Analyse ``samples`` (this rank's share) into shard ``rank`` of the store at ``out``,
    skipping (sample, analysis) units finished in any shard. The progress bar (on stderr,
    one line per rank) counts only the samples left to do, so its rate and ETA are honest
    on a resumed run; a last line gives this rank's counts and samples/s.

    The shard's writer lock is held throughout (a second writer gets a ``RunError``). A
    Ctrl-C ends the loop between units (never inside a write) as ``KeyboardInterrupt``; a
    disk that refuses writes (full, read-only) ends it with a :class:`StoreError`. Either
    way every unit written before is complete and kept, and nothing half-done is marked."""
    from tqdm.auto import tqdm

    summary = RunSummary(rank=rank)
    if any(getattr(a, "needs_knockout", True) for a in analyses):
        adapter.ensure_maskable()
    store = RecordStore(out, rank).acquire()
    try:
        done = store.done_units()
        names = [EVAL] + [a.name for a in analyses]
        for analysis in analyses:  # where analyses that draw per-sample figures put them
            if hasattr(analysis, "bind"):
                analysis.bind(out)
        pending = [s for s in samples if any((s.id, n) not in done for n in names)]
        summary.skipped = len(samples) - len(pending)
        label = f"rank {rank}/{world_size}" if world_size > 1 else "samples"
        start = time.perf_counter()
        bar = tqdm(
            pending, desc=label, unit="sample", position=rank, disable=not progress, dynamic_ncols=True
        )
        try:
            for sample in bar:
                _one_sample(adapter, sample, analyses, store, names, done, summary, bar, max_batch_tokens)
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - start
    finally:
        store.close()
    if progress:
        print(
            f"{label}: {summary.done} done, {len(summary.failed)} failed, {summary.skipped} already done "
            f"in {summary.seconds:.1f}s ({summary.rate:.2f} samples/s)",
            file=sys.stderr,
            flush=True,
        )
    return summary


def _one_sample(adapter, sample, analyses, store, names, done, summary, bar, max_batch_tokens) -> None:
    """Analyse one sample and write its units (a failure becomes a unit with its error)."""
    todo = [n for n in names if (sample.id, n) not in done]
    try:
        prepared = adapter.prepare(sample)
        bar.set_postfix(tokens=prepared.layout.length, refresh=False)
        engine = Engine(
            adapter.language_model(),
            prepared.inputs,
            prepared.layout,
            max_batch_tokens=max_batch_tokens,
        )
        base: Baseline = read_answer(adapter, prepared, engine.baseline_logits())
        rows_by_unit: dict[str, list[dict[str, Any]]] = {}
        common = {"task": sample.task, "model": adapter.model_id, "error": None}
        rows_by_unit[EVAL] = [{**common, **base.record(), "num_tokens": prepared.layout.length}]
        for analysis in analyses:
            if analysis.name in todo:
                rows = analysis.records(adapter, prepared, engine, base)
                rows_by_unit[analysis.name] = [{**common, **r} for r in rows]
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a long run records the failure and goes on
        if is_environment_error(exc):  # a full disk is no fault of the sample: stop, resume later
            raise store_error(Path(getattr(exc, "filename", None) or "?"), exc) from exc
        message = str(exc) if isinstance(exc, VlmflowError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, VlmflowError):
            log.debug("sample %s failed:\n%s", sample.id, traceback.format_exc())
        summary.failed[sample.id] = message
        bar.write(f"sample {sample.id}: failed: {message}")
        for name in todo:
            store.write_unit(
                sample.id, name, [{"task": sample.task, "model": adapter.model_id, "error": message}]
            )
        return
    for name in todo:
        store.write_unit(sample.id, name, rows_by_unit.get(name, []))
    summary.done += 1
