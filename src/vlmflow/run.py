"""The run loop: samples -> prepared inputs -> engine -> analyses -> records in the store.

A run folder holds ``manifest.json`` (the configuration and provenance), ``records/``
(the store) and, once finished, ``summary/``, ``figures/`` and ``report.html``. Running
the same command into the same folder resumes it; a different configuration is refused.
A sample that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import json
import logging
import platform
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
from .store import RecordStore

log = logging.getLogger(__name__)
EVAL = "eval"


@dataclass
class RunSummary:
    """Counts of one run (this process's shard)."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


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


def open_run(out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Create or resume the run folder ``out``; refuse a different configuration."""
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
        manifest["resumed_at"] = manifest.get("resumed_at", []) + [time.strftime("%Y-%m-%dT%H:%M:%S")]
    else:
        manifest = {
            "config": canonical,
            "versions": versions(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    path.write_text(json.dumps(manifest, indent=2))
    return manifest


def close_run(out: Path, summary: RunSummary, extra: dict[str, Any] | None = None) -> None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest["samples"] = {
        "done": summary.done,
        "skipped_already_done": summary.skipped,
        "failed": len(summary.failed),
        "failures": summary.failed,
    }
    manifest.update(extra or {})
    path.write_text(json.dumps(manifest, indent=2))


def run_samples(
    adapter: Adapter,
    samples: Sequence[Sample],
    analyses: Sequence[Any],
    out: Path,
    *,
    rank: int = 0,
    progress: bool = True,
    max_batch_tokens: int | None = None,
) -> RunSummary:
    """Analyse ``samples`` into the store at ``out``, skipping finished units."""
    from tqdm.auto import tqdm

    store = RecordStore(out, rank)
    done = store.done_units()
    names = [EVAL] + [a.name for a in analyses]
    summary = RunSummary()
    if any(getattr(a, "needs_knockout", True) for a in analyses):
        adapter.ensure_maskable()
    start = time.perf_counter()
    bar = tqdm(samples, desc=f"rank {rank}" if rank else "samples", unit="sample", disable=not progress)
    for sample in bar:
        todo = [n for n in names if (sample.id, n) not in done]
        if not todo:
            summary.skipped += 1
            continue
        try:
            prepared = adapter.prepare(sample)
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
            message = str(exc) if isinstance(exc, VlmflowError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, VlmflowError):
                log.debug("sample %s failed:\n%s", sample.id, traceback.format_exc())
            summary.failed[sample.id] = message
            bar.write(f"sample {sample.id}: failed: {message}")
            for name in todo:
                store.write_unit(
                    sample.id, name, [{"task": sample.task, "model": adapter.model_id, "error": message}]
                )
            continue
        for name in todo:
            store.write_unit(sample.id, name, rows_by_unit.get(name, []))
        summary.done += 1
    summary.seconds = time.perf_counter() - start
    return summary
