"""The run loop: samples -> probes (prepared input, engine, baseline) -> analyses -> records.

The run folder is a :class:`~vlmflow.rundir.RunDir`. A sample that fails is recorded with
its error and the run goes on; a resumed run retries it (its new attempt supersedes the
failure, see :mod:`vlmflow.store`). Running out of memory is no sample's fault: it stops
the run like a full disk, keeping what finished. A warning raised while a sample is analysed
is said once its units are stored, and a warning filter that makes it an error (``python -W
error``) fails no sample (see :class:`_Warnings`). With several processes each rank runs
:func:`run_samples` on its share of the samples into its own record shard, and rank 0
alone opens and closes the run (see :mod:`vlmflow.distributed`).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analyses.base import Analysis
from .errors import DataError, RunError, RunStopped, VlmflowError, say_warning
from .models.base import Adapter
from .probe import Probe
from .rundir import EVAL, RunDir
from .sample import Sample
from .store import Scan, is_environment_error, scan, store_error, warn_damage

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts of one session of a run: of one rank's shard, or of all ranks (:meth:`combine`)."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    rank: int = 0
    #: samples that had failed in an earlier session and were tried again in this one
    retried: int = 0
    #: samples that had failed in an earlier session and were kept so (``retry_failed=False``);
    #: not in ``skipped``, which counts samples done without error
    kept_failed: int = 0

    def counts(self) -> str:
        """``"3 done, 1 failed, 4 already done"`` (and ``", retried 2 previously failed"``, or
        ``", 1 failed before, kept (--no-retry-failed)"``)."""
        text = f"{self.done} done, {len(self.failed)} failed, {self.skipped} already done"
        return text + self.earlier_failures()

    def earlier_failures(self) -> str:
        """What became of the samples that had failed before: ``", retried 2 previously
        failed"``, ``", 1 failed before, kept (--no-retry-failed)"`` or ``""``."""
        text = f", retried {self.retried} previously failed" if self.retried else ""
        if self.kept_failed:
            text += f", {self.kept_failed} failed before, kept (--no-retry-failed)"
        return text

    @property
    def all_failed(self) -> bool:
        """Whether the run has no sample done: every selected sample failed, in this
        session or in an earlier one and kept so (``retry_failed=False``)."""
        return bool(self.failed or self.kept_failed) and not self.done and not self.skipped

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
            retried=sum(p.retried for p in parts),
            kept_failed=sum(p.kept_failed for p in parts),
            seconds=max((p.seconds for p in parts), default=0.0),
        )


def run_samples(
    adapter: Adapter,
    samples: Sequence[Sample],
    analyses: Sequence[Analysis],
    run: RunDir | str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    max_batch_tokens: int | None = None,
    correctness: str = "ids",
    retry_failed: bool = True,
) -> RunSummary:
    """Analyse ``samples`` (this rank's share) into shard ``rank`` of ``run``'s store,
    skipping (sample, analysis) units finished in any shard. A unit that failed in an
    earlier session is tried again (``retry_failed=False``: kept as failed); a retry that
    succeeds replaces the failure in the store, one that fails again replaces it by the new
    failure. The progress bar (on stderr, one line per rank) counts only the samples left
    to do, so its rate and ETA are honest on a resumed run; a last line gives this rank's
    counts and samples/s.

    The shard's writer lock is held throughout (a second writer gets a ``RunError``). A
    Ctrl-C ends the loop between units (never inside a write) as ``KeyboardInterrupt``; a
    disk that refuses writes (full, read-only) ends it with a :class:`StoreError`, and
    running out of memory (``torch.OutOfMemoryError``, CUDA's or the CPU's) with a
    :class:`~vlmflow.errors.RunStopped`. Either way every unit written before is complete
    and kept, and nothing half-done is marked.
    ``correctness``: what counts as a correct answer (``ids`` or the paper's ``text``, see
    :data:`vlmflow.analyses.base.CORRECTNESS`).

    Warnings raised while a sample is analysed (frames that repeat, estimates the screen
    found unreliable) are said after its units are stored, each once a run; one a warning
    filter makes an error (``python -W error``) is printed, not raised: it fails no sample
    and stops no run."""
    from tqdm.auto import tqdm

    from .analyses.base import CORRECTNESS

    if correctness not in CORRECTNESS:
        raise RunError(f"unknown correctness rule {correctness!r}; choose from {', '.join(CORRECTNESS)}")
    check_on_model(analyses, adapter)

    summary = RunSummary(rank=rank)
    said = _Warnings()
    if any(a.needs_knockout for a in analyses):
        adapter.ensure_maskable()
    run = run if isinstance(run, RunDir) else RunDir(run)
    store = run.store(rank).acquire()
    try:
        found = store.scan()
        warn_damage(found, store.dir, again=True)
        failed, done = _done(found, retry_failed)
        names = [EVAL] + [a.name for a in analyses]
        pending = _pending(samples, names, done)
        kept = {s for s, _ in found.failed} - {s.id for s in pending} if not retry_failed else set()
        summary.kept_failed = len({s.id for s in samples if s.id in kept})
        summary.skipped = len(samples) - len(pending) - summary.kept_failed
        summary.retried = len({s.id for s in pending if any((s.id, n) in failed for n in names)})
        label = f"rank {rank}/{world_size}" if world_size > 1 else "samples"
        if progress and summary.retried:
            print(
                f"{label}: resuming: {summary.skipped} already done, "
                f"retrying {summary.retried} previously failed",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        bar = tqdm(
            pending, desc=label, unit="sample", position=rank, disable=not progress, dynamic_ncols=True
        )
        try:
            for sample in bar:
                _one_sample(
                    adapter,
                    sample,
                    analyses,
                    store,
                    names,
                    done,
                    summary,
                    bar,
                    max_batch_tokens,
                    correctness,
                    failed,
                    said,
                )
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - start
    finally:
        store.close()
    if progress:
        print(
            f"{label}: {summary.counts()} in {summary.seconds:.1f}s ({summary.rate:.2f} samples/s)",
            file=sys.stderr,
            flush=True,
        )
    return summary


class _Warnings:
    """The warnings of a run's units, said outside them.

    A unit's warnings are recorded while it runs (:meth:`recording`, every filter set to
    record) and said with the run's own filters once its records are stored (:meth:`say`),
    identical ones once a run. A filter that turns one into an exception (``-W error``)
    would have failed the unit and lost its computed records, or stopped the run before
    its report: such a warning is printed (``warnings.showwarning``) instead of raised."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, type, str, int]] = set()

    @contextmanager
    def recording(self) -> Iterator[list[warnings.WarningMessage]]:
        """A context that records (neither says nor raises) the warnings raised in it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught

    def say(self, caught: Sequence[warnings.WarningMessage]) -> None:
        """Say ``caught`` with the filters in force outside the unit, each once a run
        (entering a unit resets Python's own once-only bookkeeping)."""
        for w in caught:
            key = (str(w.message), w.category, w.filename, w.lineno)
            if key in self.seen:
                continue
            self.seen.add(key)
            # the module its filters match (``-W ignore::UserWarning:vlmflow.data.video``)
            module = next(
                (n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None) == w.filename), None
            )
            say_warning(w.message, w.category, w.filename, w.lineno, module)  # an error: printed


def check_on_model(analyses: Sequence[Analysis], adapter: Adapter, model: str = "") -> None:
    """Refuse, once and before any sample, what the loaded model makes impossible: a layer it
    does not have (:func:`~vlmflow.analyses.base.check_layers`) and what an analysis resolves
    on it through its own ``check_model(adapter)`` (logit-lens keywords on the tokenizer)."""
    from .analyses.base import check_layers

    check_layers(analyses, adapter.num_layers, model or adapter.model_id)
    for analysis in analyses:
        check = getattr(analysis, "check_model", None)
        if check is not None:
            check(adapter)


def samples_to_do(
    run: RunDir | str | Path,
    samples: Sequence[Sample],
    analyses: Sequence[Analysis],
    *,
    retry_failed: bool = True,
) -> list[str]:
    """The ids of ``samples`` (in their order) that still have a unit to do in ``run``'s
    store, in any shard: what :func:`run_samples` would analyse rather than count as already
    done. A resumed session shares these out among its ranks (:func:`vlmflow.api.run`), so
    that no rank idles on a share that is already done while another does the rest."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    _, done = _done(scan(run.records_dir), retry_failed)
    return [s.id for s in _pending(samples, [EVAL] + [a.name for a in analyses], done)]


def _done(found: Scan, retry_failed: bool) -> tuple[dict[Any, Any], set[tuple[str, str]]]:
    """The units to retry (their failed attempts) and the units done, of a store's scan."""
    # a failed unit is not done: it is retried, superseding its failed attempt
    failed = found.failed if retry_failed else {}
    return failed, {u for u in found.units if u not in failed}


def _pending(samples: Sequence[Sample], names: Sequence[str], done: set[tuple[str, str]]) -> list[Sample]:
    return [s for s in samples if any((s.id, n) not in done for n in names)]


def _one_sample(
    adapter,
    sample,
    analyses,
    store,
    names,
    done,
    summary,
    bar,
    max_batch_tokens,
    correctness="ids",
    failed=None,
    said: _Warnings | None = None,
) -> None:
    """Analyse one sample and write its units (a failure becomes a unit with its error).

    A sample its loader could not read (``sample.error``) fails with that reason, unprepared,
    and so does one that cannot be prepared or answered: every unit gets the error. An
    analysis that fails on a prepared sample fails its own unit only; the units computed
    beside it (the answer, the other analyses) are kept. ``failed`` maps the units being
    retried to their failed attempt, which each new write supersedes. The warnings raised
    while the sample is analysed are recorded and said (``said``) once its units are stored:
    a filter that makes a warning an error cannot fail a unit computed beside it."""
    said = said or _Warnings()
    caught: list[warnings.WarningMessage] = []
    try:
        with said.recording() as caught:
            work = (sample, analyses, store, names, done, summary, bar, max_batch_tokens, correctness, failed)
            _analyse(adapter, *work)
    finally:
        said.say(caught)


def _analyse(
    adapter, sample, analyses, store, names, done, summary, bar, max_batch_tokens, correctness, failed
) -> None:
    """:func:`_one_sample`'s work, its warnings recorded by the caller."""
    failed = failed or {}
    todo = [n for n in names if (sample.id, n) not in done]
    rows_by_unit: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    try:
        if sample.error is not None:  # a fixed item is other data: this folder refuses it
            raise DataError(f"{sample.error} (once fixed, run the file into a new --out folder)")
        prepared = adapter.prepare(sample)
        bar.set_postfix(tokens=prepared.layout.length, refresh=False)
        probe = Probe(adapter, prepared, max_batch_tokens=max_batch_tokens, correctness=correctness)
        # every record says how many frames the input was built from (a sample's own frames
        # are used as given, whatever --num-frames says)
        common = {
            "task": sample.task,
            "model": adapter.model_id,
            "num_frames": prepared.num_frames,
            "frame_policy": prepared.frame_policy,  # None: the sample's own frames
            "error": None,
        }
        rows_by_unit[EVAL] = [{**common, **probe.answer.record(), "num_tokens": probe.layout.length}]
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a long run records the failure and goes on
        errors = dict.fromkeys(todo, _failure(exc, sample.id, adapter))
    else:
        for analysis in analyses:
            if analysis.name not in todo:
                continue
            try:
                rows = analysis.records(probe)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                errors[analysis.name] = _failure(exc, sample.id, adapter)
                continue
            rows_by_unit[analysis.name] = [{**common, **r} for r in rows]
    if errors:
        if len(errors) < len(todo):  # some analyses failed: say which
            message = "; ".join(f"{name}: {err}" for name, err in errors.items())
        else:  # the sample failed (every unit has the same reason) or every analysis did
            message = "; ".join(dict.fromkeys(errors.values()))
        summary.failed[sample.id] = message
        bar.write(f"sample {sample.id}: failed: {message}")
    for name in todo:
        if name in errors:
            rows = [{"task": sample.task, "model": adapter.model_id, "error": errors[name]}]
        else:
            rows = rows_by_unit.get(name, [])
        store.write_unit(sample.id, name, rows, supersedes=failed.get((sample.id, name)))
    if not errors:
        summary.done += 1


def _failure(exc: Exception, sample_id: str, adapter: Adapter) -> str:
    """The one-line reason a sample (or one of its analyses) failed; a full disk or running
    out of memory is no fault of the sample and stops the run instead (resume later)."""
    if is_environment_error(exc):
        raise store_error(Path(getattr(exc, "filename", None) or "?"), exc) from exc
    if is_out_of_memory(exc):
        raise out_of_memory(sample_id, adapter, exc) from exc
    if not isinstance(exc, VlmflowError):
        log.debug("sample %s failed:\n%s", sample_id, traceback.format_exc())
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the machine running out of memory: ``torch.OutOfMemoryError``
    (which ``torch.cuda.OutOfMemoryError`` is), Python's ``MemoryError``, or the CPU
    allocator's failure (a plain ``RuntimeError`` in torch)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom, torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def out_of_memory(sample_id: str, adapter: Adapter, exc: BaseException) -> RunStopped:
    """The :class:`RunStopped` that ends a run out of memory on ``sample_id``, saying what to do."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return RunStopped(
        f"out of memory on {getattr(adapter, 'device', 'the device')} while analysing sample {sample_id} "
        f"({first}); the run stopped cleanly and every finished unit is kept; free memory (other "
        "processes on the device) or lower --max-batch-tokens (Options.max_batch_tokens; it changes "
        "results only by floating-point rounding) and re-run the same command to resume; fewer frames "
        "(--num-frames) "
        "or a smaller dtype (--dtype bfloat16) change the results, so they need a new --out"
    )
