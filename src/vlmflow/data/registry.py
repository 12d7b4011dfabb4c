"""The dataset registry and :func:`load_dataset`, the one entry point from a spec to Samples.

A loader is registered under a name with ``@DATASETS.register("name")`` and called with the
part of the spec after the first ``:`` (a path for benchmarks on disk, ``"N"`` for
``synthetic:N``). It returns every Sample of the dataset; task selection and seeded
subsampling happen here, once, the same way for every dataset.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Collection, Iterable

from ..errors import DataError
from ..registry import Registry
from ..sample import Sample
from ._common import FILE_ERROR

Loader = Callable[[str], list[Sample]]

DATASETS: Registry[Loader] = Registry("dataset")

TASK_LISTS: dict[str, Callable[[str], tuple[str, ...]]] = {}
"""Dataset name -> its published task names (a function of the spec's argument); the
paper's task ids number these, whatever part of the benchmark is on disk."""


def published_tasks(name: str, tasks: Iterable[str] | Callable[[str], Iterable[str]]) -> None:
    """Declare the published task list of dataset ``name`` (or a function of its argument
    giving it), so its task ids do not depend on which tasks a copy holds."""
    if callable(tasks):
        TASK_LISTS[name] = lambda arg: tuple(tasks(arg))
    else:
        fixed = tuple(tasks)
        TASK_LISTS[name] = lambda arg: fixed


def load_dataset(
    spec: str,
    *,
    tasks: list[str] | None = None,
    samples: int | None = None,
    seed: int = 0,
) -> list[Sample]:
    """Samples of the dataset ``spec`` (``NAME:PATH``, ``synthetic`` or ``synthetic:N``).

    ``tasks`` keeps only those tasks (a list, or one task as text), named or given by the
    paper's task id (a string of digits: the index in the alphabetical order of the
    benchmark's published task names, then any other tasks on disk; for a dataset without
    a published list, such as ``jsonl``, of the task names on disk). An id whose task is
    missing from the copy on disk raises :class:`DataError` naming that task. ``samples``
    (>= 1) keeps at most that many per task, drawn with ``random.Random(seed).sample`` and
    returned in their original order; a task with fewer keeps all of them, with a one-line
    ``UserWarning`` saying how many it has. An unknown
    dataset raises ``VlmflowError``; an unknown task or an empty selection raises
    :class:`DataError`, and so does a selected task whose annotation file cannot be read (an
    unselected task's bad file is ignored).
    """
    if not isinstance(spec, str):
        raise DataError(f"a dataset is named by text (NAME:PATH, synthetic or synthetic:N), got {spec!r}")
    if isinstance(tasks, str):  # one task, not its characters
        tasks = [tasks]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise DataError(
            f"samples must be a whole number >= 1 (samples kept per task) or None, got {samples!r}"
        )
    name, _, arg = spec.partition(":")
    loader = DATASETS.get(name.strip())
    items = loader(arg)
    _refuse_duplicate_ids(spec, items)
    by_task: dict[str, list[Sample]] = {}
    for s in items:
        by_task.setdefault(s.task, []).append(s)
    if not by_task:
        raise DataError(f"dataset {spec!r} has no samples")

    # The paper's task ids number the benchmark's published tasks, so a partial download
    # never shifts them; other tasks on disk follow. Only well-formed items count, so a
    # malformed item whose task field is unreadable (task "default") never shifts them.
    published = TASK_LISTS[name.strip()](arg) if name.strip() in TASK_LISTS else ()
    extra = {s.task for s in items if s.error is None or s.meta.get(FILE_ERROR)} - set(published)
    numbered = sorted(set(published)) + sorted(extra)
    keep = list(by_task) if tasks is None else _resolve_tasks(spec, tasks, by_task, numbered)
    chosen: set[int] = set()
    counts = {task: len(by_task.get(task, [])) for task in keep}
    short = {task: n for task, n in counts.items() if samples is not None and 0 < n < samples}
    if short:  # fewer than asked: said once, in one line, instead of silently
        have = ", ".join(f"task {task!r} has {n}" for task, n in short.items())
        warnings.warn(
            f"dataset {spec!r}: {samples} samples per task asked (--samples, Options.samples), but "
            f"{have}; all of {'its' if len(short) == 1 else 'their'} samples are used",
            UserWarning,
            stacklevel=2,
        )
    for task in keep:
        group = by_task.get(task, [])
        for s in group:
            if s.meta.get(FILE_ERROR):  # the task's annotation file cannot be read at all
                raise DataError(f"dataset {spec!r}: task {task!r}: {s.error}")
        if samples is not None and samples < len(group):
            picked = random.Random(seed).sample(range(len(group)), max(samples, 0))
            group = [group[i] for i in sorted(picked)]
        if not group:
            raise DataError(f"dataset {spec!r}: task {task!r} has no samples selected")
        chosen.update(id(s) for s in group)
    return [s for s in items if id(s) in chosen]


def selected_tasks(spec: str, tasks: list[str] | None) -> list[str]:
    """The task names ``tasks`` select in dataset ``spec`` (names or paper task ids, as
    :func:`load_dataset` reads them), sorted and without repeats: ``["1", "object_count"]``
    and ``["object_count", "action_sequence", "object_count"]`` select alike. ``[]`` for
    none (every task). Raises as :func:`load_dataset` does."""
    if not tasks:
        return []
    return sorted({s.task for s in load_dataset(spec, tasks=list(tasks))})


def _refuse_duplicate_ids(spec: str, items: list[Sample]) -> None:
    """Sample ids key the run's records: two items with one id would be one unit, the second
    silently skipped as "already done". Refuse the file, naming the id and where it is."""
    seen: dict[str, Sample] = {}
    for s in items:
        first = seen.setdefault(s.id, s)
        if first is not s:

            def where(x: Sample) -> str:
                m = x.meta
                place = m.get("json") or m.get("parquet") or m.get("file") or ""
                index = m.get("index", m.get("line"))
                return f"{place} item {index}".strip() if index is not None else (place or x.task)

            raise DataError(
                f"dataset {spec!r}: duplicate sample id {s.id!r} ({where(first)} and {where(s)}); "
                "ids must be unique"
            )


def _resolve_tasks(spec: str, wanted: list[str], present: Collection[str], numbered: list[str]) -> list[str]:
    """Task names for ``wanted`` entries: names first, then task ids (indices into
    ``numbered``); a task not ``present`` on disk is an error naming it."""
    out: list[str] = []
    for w in wanted:
        w = str(w).strip()
        if w in present or w in numbered:
            task = w
        elif w.isascii() and w.isdigit() and int(w) < len(numbered):
            task = numbered[int(w)]
        else:
            listing = ", ".join(
                f"{i} {n}" + ("" if n in present else " (missing)") for i, n in enumerate(numbered)
            )
            raise DataError(f"dataset {spec!r} has no task {w!r}; its tasks: {listing}")
        if task not in present:
            which = f"task id {w} is {task!r}" if task != w else f"task {w!r} (id {numbered.index(w)})"
            raise DataError(
                f"dataset {spec!r}: {which}, one of the benchmark's published tasks, is missing "
                "from this copy: it has none of its samples (a partial download?)"
            )
        if task not in out:
            out.append(task)
    if not out:
        raise DataError(f"dataset {spec!r}: the task selection is empty")
    return out
