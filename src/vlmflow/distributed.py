"""One process or many: the plumbing that lets a run shard its samples over a process group.

A run launched with ``torchrun`` or ``accelerate launch`` finds ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in its environment; :func:`init` then
joins the process group and returns a :class:`Context` for this rank. Without those
variables it returns the context of a group of one, whose collectives are no-ops, so the
run loop has a single code path for one process and for many (DESIGN.md, principle 6).

What the group is used for, and why it is small:

* rank 0 alone writes the run's ``manifest.json`` (:meth:`Context.on_main`); the other
  ranks wait for it and fail with rank 0's error if it refused the folder;
* what every rank does on its own and the group must agree on (loading the model) goes
  through :meth:`Context.check_all`: one rank's failure stops every rank with its message;
* samples go to ranks round-robin by their index in the loaded dataset
  (:meth:`Context.shard`), which every rank loads identically, so the assignment is
  deterministic; on a resume the samples left to do (read by rank 0 from the store, and
  broadcast) are dealt first, so no rank idles on a share that is already done; each rank
  writes its own record shard, and a record does not depend on which rank computed it;
* at the end every rank's counts are gathered (:meth:`Context.gather`, which is also the
  barrier after which rank 0 merges the shards into the summaries and the report).

The group is created once per process and kept until exit, so a program may call
``vlmflow.run`` several times under one launch (a group destroyed and created again would
meet the first one's keys in the launcher's rendezvous store). A group that broke (a rank
gone, or one past the timeout) is not used again: :func:`init` then refuses the next run.

Only small Python objects cross the group, never tensors, so the backend is ``gloo`` on
CPU and on GPU machines alike (no NCCL set-up, and the same behaviour in tests). The
timeout of the group bounds how long rank 0 waits for the slowest rank at the end; it is
long (``VLMFLOW_DIST_TIMEOUT_S``, default 12 hours) because ranks legitimately finish
far apart on big runs. A rank that crashes makes the launcher stop the others; its
finished units stay in its shard, and re-running the command resumes them (or
``vlmflow merge RUN_DIR`` writes the report from whatever the shards hold).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import RunError, RunStopped, VlmflowError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 12 * 3600


@dataclass
class Context:
    """This process's place in the group: ``rank`` of ``world_size`` (``local_rank`` on its node).

    ``owns_group`` is true when vlmflow created the process group (:func:`init`; it is kept
    for the life of the process and destroyed at exit); a group the caller created is used
    and left alone.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process (collectives do something)."""
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: round-robin by index (``items[rank::world_size]``).

        Deterministic given the same ``items`` on every rank, balanced within one item,
        and it interleaves tasks, so every rank sees a similar mix of sample costs.
        """
        return list(items[self.rank :: self.world_size])

    def device(self, requested: str) -> str:
        """The torch device for this rank: ``cuda`` becomes ``cuda:<local_rank>``."""
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        device = device_for(requested, self.local_rank, available)
        if device.startswith("cuda:") and available:
            torch.cuda.set_device(int(device.split(":", 1)[1]))
        return device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only; every rank returns its result or raises its error.

        The other ranks wait until rank 0 is done (this is the start barrier of a run), then
        get rank 0's (picklable) result, or a :class:`RunError` carrying rank 0's message,
        so a folder that rank 0 refuses stops every rank instead of leaving them waiting.
        """
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # re-raised below, after the others have been told
                error = exc
        if self.active:
            import torch.distributed as dist

            message = None if error is None else _message(error)
            box: list[Any] = [(result if error is None else None, message)]
            with self._group_alive():
                dist.broadcast_object_list(box, src=0)
            result, message = box[0]
            if not self.is_main and message is not None:
                raise RunError(f"rank 0 stopped the run: {message}")
        if error is not None:
            raise error
        return result

    def check_all(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raised on any rank, every rank raises.

        The ranks agree before going on (a barrier), so one rank's failure (a model that
        does not load, a run stopped out of memory) stops the group with that rank's
        message instead of leaving the others waiting at the next collective. The failing
        rank raises its own error; the others a :class:`RunError` (a
        :class:`~vlmflow.errors.RunStopped` when the failure was one) naming the first
        failing rank and its message. ``KeyboardInterrupt`` is not caught (the launcher
        delivers Ctrl-C to every rank).
        """
        result: Any = None
        error: Exception | None = None
        try:
            result = fn()
        except Exception as exc:  # re-raised below, after the others have been told
            error = exc
        if self.active:
            import torch.distributed as dist

            mine = None if error is None else (_message(error), isinstance(error, RunStopped))
            told: list[Any] = [None] * self.world_size
            with self._group_alive():
                dist.all_gather_object(told, mine)
            failed = [(r, m) for r, m in enumerate(told) if m is not None]
            if error is None and failed:
                rank, (message, stopped) = failed[0]
                kind = RunStopped if stopped else RunError
                raise kind(f"rank {rank} stopped the run: {message}")
        if error is not None:
            raise error
        return result

    def gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order, on every rank (a barrier too)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with self._group_alive():
            dist.all_gather_object(out, obj)
        return out

    @contextmanager
    def _group_alive(self) -> Iterator[None]:
        """A collective whose group broke - a rank that crashed or was killed (its sockets
        closed), or one that did not answer within the group's timeout - raises
        :class:`RunStopped` instead of gloo's ``RuntimeError``, so the run records the stop
        (``stopped`` and the counts in the manifest) and says how to resume."""
        try:
            yield
        except RuntimeError as exc:  # torch's DistBackendError is one
            who = f"rank {1 - self.rank}" if self.world_size == 2 else "another rank"
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "timed out" in said.lower() or "timeout" in said.lower():
                what = (
                    f"{who} did not answer within VLMFLOW_DIST_TIMEOUT_S={timeout_s():g} s while "
                    f"rank {self.rank} waited for it ({said}); raise VLMFLOW_DIST_TIMEOUT_S if "
                    "ranks finish that far apart"
                )
            else:
                what = (
                    f"{who} left the process group (crashed or was killed) while rank "
                    f"{self.rank} waited for it ({said})"
                )
            # gloo's group is unusable now: a later run of this process is refused by init()
            _broken[:] = [what]
            raise RunStopped(
                f"{what}; every finished unit is kept in its shard: re-run the same command to resume"
            ) from exc

    def close(self) -> None:
        """Done with the group for this run. A group vlmflow created is kept for the next
        run of this process (:func:`init`) and destroyed at exit (:func:`_destroy_at_exit`):
        a group created again would meet the keys of the first one in the launcher's
        rendezvous store, and its ranks would hang or connect to dead ports
        (pytorch/pytorch#55967)."""


def device_for(requested: str, local_rank: int, cuda_devices: int) -> str:
    """Pure mapping behind :meth:`Context.device`.

    A bare ``cuda`` becomes ``cuda:<local_rank mod cuda_devices>`` (one GPU per process on a
    node; processes share GPUs round-robin when there are more processes than GPUs). An
    explicit ``cuda:N``, ``cpu`` or any other device is kept as given.
    """
    if requested == "cuda" and cuda_devices > 0:
        return f"cuda:{local_rank % cuda_devices}"
    return requested


def env_ranks(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from launcher variables, or ``None`` without them."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise RunError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
    if not 0 <= rank < world:
        raise RunError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def init() -> Context:
    """The context of this process; joins the launcher's process group when there is one.

    Uses an already initialised ``torch.distributed`` group as it is (the caller's, or the
    one an earlier run of this process created). Otherwise reads
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set by ``torchrun`` or ``accelerate launch``;
    with a world size above one it initialises a ``gloo`` group from the environment
    (``MASTER_ADDR``/``MASTER_PORT``), once per process: it is kept for later runs and
    destroyed at exit. Without those variables: a group of one.
    """
    import torch.distributed as dist

    if _broken:
        raise RunError(
            f"the process group broke in an earlier run of this process ({_broken[0]}); it "
            "cannot be used again: start a new launch (torchrun ...) to run again"
        )
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Context(rank, world, local, owns_group=_created[0])
    ranks = env_ranks()
    if ranks is None:
        return Context()
    rank, world, local = ranks
    if world == 1:
        return Context(rank, world, local)
    if not dist.is_available():
        raise RunError("this torch build has no torch.distributed; run a single process instead")
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RunError(
            f"RANK={rank} WORLD_SIZE={world} is set but MASTER_ADDR/MASTER_PORT are not; launch "
            "with torchrun or accelerate launch, which set them"
        )
    timeout = timeout_s()
    # Imported before the group exists: importing torch.distributed.fsdp (transformers does,
    # when the model loads) with a group up keeps ~10 references to it in default arguments,
    # so destroy_process_group (close) could not free it and its gloo threads lived on until
    # the interpreter tore down its modules, which sometimes aborted the process at exit
    # ("terminate called without an active exception", exit -6).
    import torch.distributed.fsdp  # noqa: F401

    dist.init_process_group(
        backend="gloo",
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    if not _created[0]:
        # before the interpreter tears down its modules (a group destroyed then sometimes
        # aborted the process: "terminate called without an active exception", exit -6)
        atexit.register(_destroy_at_exit)
    _created[0] = True
    log.debug("rank %d of %d joined the process group (local rank %d)", rank, world, local)
    return Context(rank, world, local, owns_group=True)


_created = [False]  # whether init() created this process's group (destroyed at exit)
_broken: list[str] = []  # why a collective of this process's group failed (it is unusable)


def timeout_s() -> float:
    """The process group's timeout in seconds (``VLMFLOW_DIST_TIMEOUT_S``, default 12 h)."""
    return float(os.environ.get("VLMFLOW_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def _destroy_at_exit() -> None:
    """Destroy the process group :func:`init` created, if it is still up (atexit)."""
    import torch.distributed as dist

    if _created[0] and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a group a dead rank broke: the process is ending anyway
            log.debug("destroying the process group at exit failed", exc_info=True)


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VlmflowError) else f"{type(exc).__name__}: {exc}"
