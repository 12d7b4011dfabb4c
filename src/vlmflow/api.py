"""Runs: analyses over a dataset into a run folder, with its report (what every CLI command calls).

For one input at a time, see :mod:`vlmflow.probe` (``vlmflow.load(...).probe(...)``).

>>> import tempfile, vlmflow
>>> result = vlmflow.run(
...     vlmflow.Options(model="demo", data="synthetic:1:fixed", tasks=("object_count",), progress=False),
...     [vlmflow.AnswerProbability(sample_mode="all")],
...     tempfile.mkdtemp(),
... )
>>> result.summary.done, sorted(result.report["summaries"])
(1, ['answer-prob'])
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import check_max_batch_tokens
from .errors import PlanError, RunError, RunStopped, Terminated
from .probe import Model, check_frame_policy, check_load_options, check_num_frames, load
from .run import RunSummary, check_on_model, run_samples, samples_to_do
from .rundir import RunDir, canonical_dtype
from .sample import Sample
from .store import deferred_signals, is_environment_error, store_error

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .analyses.base import Analysis
    from .lock import FolderLock
    from .models.base import Adapter


@dataclass
class Options:
    """What every run shares (the CLI's common options), by keyword.

    ``model``: checkpoint folder, hub id or ``"demo"``; ``data``: ``NAME:PATH`` or
    ``synthetic[:N[:fixed]]``; ``tasks``/``samples``/``seed`` select samples; ``device``,
    ``dtype`` and ``attn`` load the model; ``prompt``, ``num_frames`` and ``frame_policy``
    prepare each input; ``extra`` is stored in the manifest's configuration too.
    ``retry_failed``: a resumed run tries the samples that failed before again (the default;
    it is no part of the configuration, so either way resumes the same folder).
    ``max_batch_tokens`` bounds the positions the engine recomputes in one pass of packed
    knockout plans (default: the input's length, at least 64); lower it when a run stops
    out of memory. Each plan gets at least a pass of its own, so a value below the
    positions one plan recomputes saves no more. It changes results only by floating-point
    rounding (packing reorders sums: measured up to 9.2e-7 in probabilities in float32,
    6.2e-5 in bfloat16 under sdpa; ~1e-6 and ~1e-4 as bounds), so it is no part of the
    configuration either.
    ``paper``: these options came from ``--paper``'s preset (:mod:`vlmflow.paper`); recorded
    in the manifest's session as provenance, no part of the configuration, so a folder
    started with ``--paper`` resumes with the same options given explicitly, and back.
    """

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
    frame_policy: str | None = None
    correctness: str = "ids"
    progress: bool = True
    retry_failed: bool = True
    max_batch_tokens: int | None = None
    paper: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # refused here, before a run folder is touched or the model loads
        check_num_frames(self.num_frames)
        check_frame_policy(self.frame_policy)
        check_load_options(prompt=self.prompt, dtype=self.dtype, device=self.device, attn=self.attn)
        check_max_batch_tokens(self.max_batch_tokens)

    def manifest(self) -> dict[str, Any]:
        d = {
            "model": self.model,
            "data": self.data,
            "tasks": list(self.tasks),
            "samples": self.samples,
            "seed": self.seed,
            "dtype": canonical_dtype(self.dtype),  # "fp32" and "float32" resume each other
            "prompt": self.prompt,
            "num_frames": self.num_frames,
        }
        if self.frame_policy is not None:
            d["frame_policy"] = self.frame_policy
        if self.correctness != "ids":  # only when set, so earlier run folders still resume
            d["correctness"] = self.correctness
        return {**d, **self.extra}

    def load(self, device: str | None = None) -> Model:
        """The model these options name, loaded on ``device`` (default ``self.device``);
        without Hugging Face's progress bars when ``progress`` is off."""
        return load(
            self.model, device=device or self.device, dtype=self.dtype, attn=self.attn, progress=self.progress
        )

    def configure(
        self, model: Model, samples: Sequence[Sample] | None = None, frame_policy_rule: str = "chosen"
    ) -> Adapter:
        """``model``'s adapter with these options' prompt settings; given the run's
        ``samples``, it records the frame policy they are sampled with (``frame_policy``
        when set, else a benchmark's own, LongVideoBench's ``lvb``), which the manifest and a
        resume's check read (``Adapter.processing``). ``frame_policy_rule`` ``"benchmark"``
        (a folder started before the user's choice won, ``RunDir.frame_policy_rule``): the
        benchmark's own wins, as it did when the folder's first samples were sampled."""
        adapter = model.configured(
            prompt=self.prompt, num_frames=self.num_frames, frame_policy=self.frame_policy
        )
        adapter.frame_policy_rule = frame_policy_rule
        if frame_policy_rule == "benchmark":
            adapter.frame_policy_chosen = False
        if samples is not None:
            adapter.policy_samples = list(samples)
        return adapter

    def samples_of(self) -> list[Sample]:
        """The selected samples of the dataset."""
        from .data import load_dataset

        return load_dataset(self.data, tasks=list(self.tasks) or None, samples=self.samples, seed=self.seed)


@dataclass
class RunResult:
    """``out``: the run folder; ``summary``: the session's counts (the whole group's);
    ``report``: :func:`~vlmflow.report.finalize`'s result on rank 0 (``{}`` elsewhere)."""

    out: Path
    summary: RunSummary
    report: dict[str, Any]
    rank: int = 0  # this process's rank in a torchrun group (0: the one that reports)


def as_analyses(analyses: Analysis | Sequence[Analysis]) -> list[Analysis]:
    """``run``'s analyses as a list: one instance is a list of one; a class (``InformationFlow``
    instead of ``InformationFlow()``), or anything else that is not an instance, is a
    one-line :class:`PlanError` naming it, before the run folder is touched."""
    from .analyses.base import Analysis

    items = [analyses] if isinstance(analyses, Analysis) or isinstance(analyses, type) else analyses
    try:
        items = list(items)
    except TypeError:
        items = [items]
    for a in items:
        if isinstance(a, type) and issubclass(a, Analysis):
            raise PlanError(
                f"run() takes analysis instances: {a.__name__} is a class; give {a.__name__}() "
                "(with its options)"
            )
        if not isinstance(a, Analysis):
            raise PlanError(
                f"run() takes Analysis instances (e.g. InformationFlow()), got {type(a).__name__}: {a!r}"
            )
    return items


def run(
    options: Options,
    analyses: Analysis | Sequence[Analysis],
    out: str | Path | RunDir,
    *,
    model: Model | None = None,
    sample_ids: Sequence[str] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    on_open: Callable[[], None] | None = None,
    lock: FolderLock | None = None,
) -> RunResult:
    """Load the model and data of ``options``, analyse into ``out``, write the report.

    ``analyses``: instances (``[InformationFlow(window=5)]``, or one instance alone).
    ``model`` reuses a loaded model; ``sample_ids`` restricts the run to those samples of
    the dataset (a held-out split). ``on_open`` runs on rank 0 once the folder has accepted
    the run (configuration, provenance, dtype), under its lock, before the first sample (a
    pathway search writes its result there);
    ``lock`` is the folder's lock when the caller already holds it (released at the end).

    Under ``torchrun`` / ``accelerate launch`` every process calls this: each analyses its
    round-robin share of the samples left to do into its own record shard; rank 0 alone writes the
    manifest and, after all ranks are done, merges the shards into the summaries and the
    report (its result's ``report``; other ranks get ``{}``). Every rank's ``summary`` is
    the whole group's. A single process is a group of one (see :mod:`vlmflow.distributed`).
    """
    from . import distributed
    from .provenance import data_fingerprint, model_fingerprint
    from .report import finalize

    analyses = as_analyses(analyses)
    rundir = out if isinstance(out, RunDir) else RunDir(out)
    created = not rundir.path.exists()  # a folder this call makes: removed if refused empty
    finished = False
    ctx = distributed.init()
    lock = lock or rundir.lock()  # rank 0 holds it for the whole group (see vlmflow.lock)
    samples: list[Any] = []
    before: list[bytes | None] = []  # the manifest as this call found it (None: none), once read
    opened = [False]  # whether the folder has accepted this run (its manifest holds the configuration)
    closed = [False]  # whether rank 0 has recorded this session's end (RunDir.close)
    try:
        _adopt_recorded(rundir, analyses)  # every rank: a resumed folder keeps what it started with
        config = {**options.manifest(), "analyses": {a.name: a.config() for a in analyses}}
        samples = options.samples_of()
        if options.tasks:  # as resolved: by name or paper id, in any order, once each
            config["tasks"] = sorted({s.task for s in samples})
        if sample_ids is not None:
            _refuse_unknown_ids(sample_ids, samples, options)
            keep = set(sample_ids)
            samples = [s for s in samples if s.id in keep]
            config["sample_ids"] = sorted(keep)

        def open_locked() -> dict[str, Any]:
            lock.acquire()  # a second run on this folder is refused here, before any work
            path = rundir.manifest_path
            before[:] = [path.read_bytes() if path.exists() else None]
            manifest = rundir.open(
                config,
                {
                    "model": model_fingerprint(options.model, progress=options.progress),
                    "data": data_fingerprint(options.data, samples, options.seed),
                },
                analyses,
            )
            # the total, from the start: an interrupted run's counts say "done of total"
            if manifest.get("num_samples") != len(samples):
                manifest["num_samples"] = len(samples)
                rundir.write_manifest(manifest)
            opened[0] = True
            return manifest

        try:  # a run refused before its first sample leaves the manifest as it found it
            ctx.on_main(open_locked)
            # a folder started before a chosen frame policy won keeps its rule (every rank)
            rule = ctx.on_main(rundir.frame_policy_rule)

            def load_here() -> Adapter:
                loaded = model if model is not None else options.load(ctx.device(options.device))
                adapter = options.configure(loaded, samples, rule)
                # layers the model does not have, keywords its tokenizer cannot represent:
                # refused once, before any sample
                check_on_model(analyses, adapter, options.model)
                return adapter

            # every rank loads its own copy; one that fails stops them all, with its message
            # (the others would wait for it at the next collective, rank 0 with the folder open)
            adapter = ctx.check_all(load_here)
            ctx.on_main(lambda: _check_computed_in(rundir, adapter, options))
            if on_open is not None:  # last: only a run the folder has accepted writes beside it
                ctx.on_main(on_open)
        except Exception:
            if lock.held and before:
                _restore_manifest(rundir, before[0])
                opened[0] = False  # as found: a stop (a broken group) records nothing in it
            raise
        if options.progress and ctx.is_main:
            print(
                f"model: {adapter.model_id} ({adapter.family}), {_dtype_name(adapter)} on {adapter.device}",
                file=sys.stderr,
                flush=True,
            )
        share = ctx.shard(samples)
        if ctx.active:  # the samples left to do are shared out, then those already done
            # (counted, not analysed): a resume keeps every rank busy. Rank 0 reads the
            # store for the group before any rank writes, so every rank deals the same list.
            to_do = set(
                ctx.on_main(
                    lambda: samples_to_do(rundir, samples, analyses, retry_failed=options.retry_failed)
                )
            )
            share = ctx.shard([s for s in samples if s.id in to_do])
            share += ctx.shard([s for s in samples if s.id not in to_do])
        # a rank that stops (out of memory, a full disk) stops the group once every rank is
        # through its share: rank 0 then records the stop with that rank's reason (below),
        # as it does its own, instead of the others waiting for it at the gather
        mine = ctx.check_all(
            lambda: run_samples(
                adapter,
                share,
                analyses,
                rundir,
                rank=ctx.rank,
                world_size=ctx.world_size,
                progress=options.progress,
                correctness=options.correctness,
                retry_failed=options.retry_failed,
                max_batch_tokens=options.max_batch_tokens,
            )
        )
        ranks = ctx.gather(mine)  # every rank is done after this: rank 0 may merge the shards
        summary = RunSummary.combine(ranks)
        report: dict[str, Any] = {}
        done = [False]  # whether finish() returned on rank 0

        def finish() -> None:  # rank 0: the manifest and the report
            revision = getattr(getattr(adapter.model, "config", None), "_commit_hash", None)
            info = {
                "id": adapter.model_id,  # as the user named it; the folder it resolved to:
                "path": str(getattr(adapter, "model_path", adapter.model_id)),
                "revision": revision,
                "class": type(adapter.model).__name__,
            }
            used = adapter.processing()["frame_policy"]  # the policy the samples were sampled with
            extra = {"num_samples": len(samples), "model": info, "frame_policy": used}
            try:
                session = {"paper": True} if options.paper else {}
                rundir.close(summary, {**extra, **(extra_manifest or {})}, ranks=ranks, session=session)
                closed[0] = True
                report.update(finalize(rundir, lock=lock))
                done[0] = True
            except OSError as exc:  # a disk that fills while the report is written
                if not is_environment_error(exc):
                    raise
                raise store_error(Path(exc.filename or rundir.path), exc) from exc

        # the other ranks wait for it, so that every rank leaves the process group together
        # (a rank that tore down its gloo group while rank 0 still wrote the report could
        # abort at exit: "terminate called without an active exception")
        try:
            ctx.on_main(finish)
        except RunStopped as exc:  # the group broke after rank 0 wrote everything: not a stop
            if not (ctx.is_main and done[0]):
                raise
            log.warning("%s finished; then the process group broke: %s", rundir.path, exc)
        finished = True
        return RunResult(rundir.path, summary, report, ctx.rank)
    except (KeyboardInterrupt, RunStopped) as exc:  # a full disk, no memory left
        # a second Ctrl-C (or a SIGTERM) meanwhile waits until the stop is recorded and said,
        # then is dropped: the run is stopping already
        with deferred_signals(deliver=False):
            total, world = len(samples), ctx.world_size
            _say_stop(
                rundir,
                exc,
                lock,
                opened=opened[0],
                closed=closed[0],
                before=before,
                total=total,
                world_size=world,
            )
        raise
    finally:
        # and until the folder is released; one that came after a run that ended normally
        # is handed on then (a KeyboardInterrupt once everything is written)
        with deferred_signals(deliver=finished):
            held = lock.held
            lock.release()
            ctx.close()
            if created and held and not finished:
                _remove_if_only_lock(rundir)


def _say_stop(
    rundir: RunDir,
    exc: BaseException,
    lock: FolderLock,
    *,
    opened: bool,
    closed: bool = False,
    before: list[bytes | None],
    total: int,
    world_size: int = 1,
) -> None:
    """A run stopped by ``exc`` (Ctrl-C, SIGTERM, a full disk, no memory left): rank 0 records in the
    manifest what finished before the stop, or leaves a folder that had not accepted the run
    as it was found (``before``); after a Ctrl-C or SIGTERM, it says how to resume."""
    if lock.held and not opened:  # stopped before the folder accepted the run
        if before:  # (a Ctrl-C while it was being opened): leave it as it was found
            _restore_manifest(rundir, before[0])
    elif lock.held:  # rank 0 says in the manifest what finished before the stop
        rundir.record_stop(_stop_reason(exc), total or None, world_size=world_size, closed=closed)
    if lock.held and closed and isinstance(exc, KeyboardInterrupt):  # only the report was stopped
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"{how} while the report was written: every unit is finished in {rundir.path}; "
            f"run `vlmflow report {rundir.path}` to write the report",
            file=sys.stderr,
            flush=True,
        )
    elif lock.held and isinstance(exc, KeyboardInterrupt):
        said = (
            f"every finished unit is kept in {rundir.path} (manifest.json 'samples')"
            if opened
            else f"before the run started, {rundir.path} is as it was"
        )
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"{how}: {said}; re-run the same command to resume", file=sys.stderr, flush=True)


def _stop_reason(exc: BaseException) -> str:
    """The manifest's ``stopped.reason`` for a run stopped by ``exc``."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    return "interrupted (SIGINT)" if isinstance(exc, KeyboardInterrupt) else str(exc)


def _remove_if_only_lock(rundir: RunDir) -> None:
    """Remove the run folder a refused run created (after the model loaded: layers it lacks,
    a device it cannot use) when it holds nothing but its lock file, so the refusal leaves no
    folder behind; a folder holding anything else is kept as it is."""
    try:
        if {p.name for p in rundir.path.iterdir()} == {"run.lock"}:
            (rundir.path / "run.lock").unlink()
            rundir.path.rmdir()
    except OSError:
        pass  # another process wrote there meanwhile, or the disk refuses: kept


def _adopt_recorded(rundir: RunDir, analyses: Sequence[Analysis]) -> None:
    """Resuming: each analysis takes from the options its folder recorded what the
    environment resolved when it started (:meth:`Analysis.adopt_recorded`); nothing for a
    new folder, or one whose configuration cannot be read (``open`` then says why)."""
    if not (rundir.manifest_path.exists() or rundir.identity_path.exists()):
        return
    try:
        recorded = rundir.config().get("analyses") or {}
    except (RunError, OSError, ValueError):
        return
    for analysis in analyses:
        options = recorded.get(analysis.name)
        if isinstance(options, dict):
            analysis.adopt_recorded(options, rundir.path)


def _refuse_unknown_ids(sample_ids: Sequence[str], samples: Sequence[Sample], options: Options) -> None:
    """A ``DataError`` listing the ``sample_ids`` that are not among the selected ``samples``
    (a typo would otherwise run nothing), with a few known ids as a hint."""
    from .errors import DataError

    if isinstance(sample_ids, str):
        raise DataError(f"sample_ids must be a list of sample ids, got the string {sample_ids!r}")
    known = {s.id for s in samples}
    unknown = [i for i in dict.fromkeys(sample_ids) if i not in known]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        hint = ", ".join(repr(s.id) for s in samples[:3])
        raise DataError(
            f"{len(unknown)} sample id(s) not among the {len(samples)} selected samples of "
            f"{options.data!r}: {shown}; known ids include {hint}"
        )


def _restore_manifest(rundir: RunDir, before: bytes | None) -> None:
    """Put back the manifest a run found (``before``), or remove the one it created; a disk
    that refuses leaves it as it is (the error that stopped the run is the one to report)."""
    from .errors import VlmflowError

    try:
        rundir.restore_manifest(before)
    except (OSError, VlmflowError):
        pass


def _dtype_name(adapter: Any) -> str:
    return str(adapter.dtype).removeprefix("torch.")


def _check_computed_in(rundir: RunDir, adapter: Any, options: Options) -> None:
    """The dtype the model was loaded in and the adapter's input processing
    (``Adapter.processing()``: frame policy, a family's own settings), kept in the manifest
    (``computed_in``) by the run that started the folder; a resume that loads or processes
    otherwise is refused (:func:`refuse_other_computed_in`). A setting the folder has not
    recorded (an older folder) is recorded now."""
    manifest = rundir.manifest()  # read once: checked, then completed from the same copy
    now = refuse_other_computed_in(rundir, adapter, options, manifest=manifest)
    before = manifest.get("computed_in", {})
    # the policy the samples are sampled with, and by which rule (a folder started before the
    # user's choice won recorded the adapter's policy and no rule: now it says what it uses)
    after = {**now, **before}
    if "frame_policy_rule" in now:
        after.update(frame_policy=now["frame_policy"], frame_policy_rule=now["frame_policy_rule"])
    if after != before:
        manifest["computed_in"] = after
        rundir.write_manifest(manifest)


def refuse_other_computed_in(
    rundir: RunDir,
    adapter: Any,
    options: Options,
    hint: str = "",
    *,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``RunError`` when ``rundir``'s records were computed in another dtype or with other
    input processing than ``adapter`` loads and processes (the folder's ``computed_in``;
    ``hint`` ends the message); else what ``adapter`` computes in. An unset ``--dtype``
    resolves per device (float32 on a CPU, the checkpoint's dtype on a GPU), so the
    configuration alone cannot tell a float32 folder from a bfloat16 session. ``manifest``:
    the folder's manifest when the caller has read it already. Writes nothing."""
    from .errors import RunError

    now = {"dtype": _dtype_name(adapter), **adapter.processing()}
    before = dict((rundir.manifest() if manifest is None else manifest).get("computed_in", {}))
    if getattr(adapter, "frame_policy_rule", "chosen") == "benchmark":
        now["frame_policy_rule"] = "benchmark"
        if "frame_policy_rule" not in before and isinstance(before.get("frame_policy"), str):
            # started before the user's choice won: it recorded the adapter's policy, while a
            # benchmark's own (LongVideoBench's lvb) sampled its samples; compare what it used
            samples = getattr(adapter, "policy_samples", None) or []
            before["frame_policy"] = adapter.frame_policy_of(samples, default=before["frame_policy"])
            before["frame_policy_rule"] = "benchmark"
    if before.get("dtype", now["dtype"]) != now["dtype"]:
        raise RunError(
            f"{rundir.path} holds records computed in {before['dtype']}, but this session loaded "
            f"{options.model} in {now['dtype']} (on {adapter.device}); pass --dtype {before['dtype']} "
            f"(Options.dtype) to resume it, or write to a new --out{hint}"
        )
    # a setting the folder did not record: as now, unless the family says it was processed
    # otherwise before it was recorded (Adapter.processing_before)
    unrecorded = {k: v for k, v in _processing_before(adapter).items() if k in now and k not in before}
    before.update(unrecorded)
    differ = sorted(k for k in now if k in before and before[k] != now[k])
    if differ:
        untold = " (not recorded: as the vlmflow that started it processed)"
        said = ", ".join(f"{k} {before[k]!r}{untold * (k in unrecorded)} -> {now[k]!r}" for k in differ)
        changes = getattr(adapter, "processing_changes", {})
        notes = "".join(f"; {k}: {changes[k]}" for k in differ if k in unrecorded and k in changes)
        advice = (
            "this vlmflow no longer processes inputs so: write to a new --out (vlmflow report and "
            "merge still read this folder)"
            if any(k in unrecorded for k in differ)
            else "resume it with the settings it was started with, or write to a new --out"
        )
        raise RunError(
            f"{rundir.path} holds records whose inputs were processed otherwise ({said}{notes}); "
            f"{advice}{hint}"
        )
    return now


def _processing_before(adapter: Any) -> dict[str, Any]:
    """``adapter.processing_before()``, or nothing for an object without it."""
    before = getattr(adapter, "processing_before", None)
    return before() if callable(before) else {}


def merge(run_dir: str | Path) -> dict[str, Any]:
    """Merge the record shards of a run into its manifest counts, summaries and report
    (see :meth:`RunDir.merge`)."""
    return RunDir(run_dir).merge()
