"""The Python API behind every CLI command: load, run analyses into a run folder, report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run import RunSummary, close_run, open_run, record_stop, run_samples
from .store import StoreError, is_environment_error, store_error, write_text_atomic


@dataclass
class Options:
    """What every run shares (the CLI's common options)."""

    model: str
    data: str
    tasks: tuple[str, ...] = ()
    samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None
    prompt: str = "paper"
    num_frames: int = 8
    attn: str = "sdpa"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        d = {
            "model": self.model,
            "data": self.data,
            "tasks": list(self.tasks),
            "samples": self.samples,
            "seed": self.seed,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "num_frames": self.num_frames,
        }
        return {**d, **self.extra}


@dataclass
class RunResult:
    out: Path
    summary: RunSummary
    report: dict[str, Any]


def run(
    options: Options,
    analyses: list[Any],
    out: str | Path,
    *,
    adapter: Any = None,
    sample_ids: Sequence[str] | None = None,
) -> RunResult:
    """Load the model and data of ``options``, analyse into ``out``, write the report.

    ``sample_ids`` restricts the run to those samples of the dataset (a held-out split).

    Under ``torchrun`` / ``accelerate launch`` every process calls this: each analyses its
    round-robin share of the samples into its own record shard; rank 0 alone writes the
    manifest and, after all ranks are done, merges the shards into the summaries and the
    report (its result's ``report``; other ranks get ``{}``). Every rank's ``summary`` is
    the whole group's. A single process is a group of one (see :mod:`vlmflow.distributed`).
    """
    from . import distributed
    from .data import load_dataset
    from .lock import run_lock
    from .models import load_model
    from .provenance import data_fingerprint, model_fingerprint
    from .report import finalize

    out = Path(out)
    ctx = distributed.init()
    lock = run_lock(out)  # rank 0 holds it for the whole group (see vlmflow.lock)
    samples: list[Any] = []
    try:
        config = {**options.manifest(), "analyses": {a.name: a.config() for a in analyses}}
        samples = load_dataset(
            options.data, tasks=list(options.tasks) or None, samples=options.samples, seed=options.seed
        )
        if sample_ids is not None:
            keep = set(sample_ids)
            samples = [s for s in samples if s.id in keep]
            config["sample_ids"] = sorted(keep)

        def open_locked() -> dict[str, Any]:
            lock.acquire()  # a second run on this folder is refused here, before any work
            return open_run(
                out,
                config,
                {
                    "model": model_fingerprint(options.model),
                    "data": data_fingerprint(options.data, samples, options.seed),
                },
            )

        ctx.on_main(open_locked)
        if adapter is None:
            adapter = load_model(
                options.model,
                device=ctx.device(options.device),
                dtype=options.dtype,
                attn_implementation=options.attn,
                prompt_style=options.prompt,
                num_frames=options.num_frames,
            )
        if options.progress and ctx.is_main:
            print(
                f"model: {adapter.model_id} ({adapter.family}), {_dtype_name(adapter)} on {adapter.device}",
                file=sys.stderr,
                flush=True,
            )
        mine = run_samples(
            adapter,
            ctx.shard(samples),
            analyses,
            out,
            rank=ctx.rank,
            world_size=ctx.world_size,
            progress=options.progress,
        )
        ranks = ctx.gather(mine)  # every rank is done after this: rank 0 may merge the shards
        summary = RunSummary.combine(ranks)
        report: dict[str, Any] = {}
        if ctx.is_main:
            revision = getattr(getattr(adapter.model, "config", None), "_commit_hash", None)
            model = {"id": adapter.model_id, "revision": revision, "class": type(adapter.model).__name__}
            try:
                close_run(out, summary, {"num_samples": len(samples), "model": model}, ranks=ranks)
                report = finalize(out)
            except OSError as exc:  # a disk that fills while the report is written
                if not is_environment_error(exc):
                    raise
                raise store_error(Path(exc.filename or out), exc) from exc
        return RunResult(out, summary, report)
    except (KeyboardInterrupt, StoreError) as exc:
        if lock.held:  # rank 0 says in the manifest what finished before the stop
            reason = "interrupted (SIGINT)" if isinstance(exc, KeyboardInterrupt) else str(exc)
            record_stop(out, reason, len(samples) or None)
            if isinstance(exc, KeyboardInterrupt):
                print(
                    f"interrupted: every finished unit is kept in {out} (manifest.json 'samples'); "
                    "re-run the same command to resume",
                    file=sys.stderr,
                    flush=True,
                )
        raise
    finally:
        lock.release()
        ctx.close()


def _dtype_name(adapter: Any) -> str:
    return str(adapter.dtype).removeprefix("torch.")


def merge(run_dir: str | Path) -> dict[str, Any]:
    """Merge the record shards of a run into its manifest counts, summaries and report.

    A multi-process run merges by itself at the end (rank 0, after every rank is done); this
    is for one whose ranks ended separately, or whose rank 0 stopped before merging: the
    manifest's sample counts are recomputed from every shard, the shards' finished units
    recorded, and ``records.parquet``, ``summary/``, ``figures/`` and ``report.html``
    rewritten. Returns ``finalize``'s result plus ``shards`` and ``samples``.
    """
    import json

    from .errors import RunError
    from .report import finalize
    from .run import now, sample_counts
    from .store import shard_status

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not (run_dir / "records").is_dir() or not manifest_path.exists():
        raise RunError(f"{run_dir} is not a run folder (it needs manifest.json and records/)")
    from .lock import run_lock

    with run_lock(run_dir):  # not while a run still writes this folder
        manifest = json.loads(manifest_path.read_text())
        shards = shard_status(run_dir)
        manifest["samples"] = sample_counts(run_dir, manifest.get("num_samples"))
        manifest["merged_at"] = now()
        manifest["shards"] = shards
        write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
        return {**finalize(run_dir), "shards": shards, "samples": manifest["samples"]}
