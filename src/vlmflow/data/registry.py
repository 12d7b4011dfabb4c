"""The dataset registry and :func:`load_dataset`, the one entry point from a spec to Samples.

A loader is registered under a name with ``@DATASETS.register("name")`` and called with the
part of the spec after the first ``:`` (a path for benchmarks on disk, ``"N"`` for
``synthetic:N``). It returns every Sample of the dataset; task selection and seeded
subsampling happen here, once, the same way for every dataset.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import DataError
from ..registry import Registry
from ..sample import Sample

Loader = Callable[[str], list[Sample]]

DATASETS: Registry[Loader] = Registry("dataset")


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
    dataset's task names). ``samples`` (>= 1) keeps at most that many per task, drawn with
    ``random.Random(seed).sample`` and returned in their original order. An unknown
    dataset raises ``VlmflowError``; an unknown task or an empty selection raises
    :class:`DataError`.
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

    # The paper's task ids count the tasks of well-formed items only, so a malformed item
    # whose task field is unreadable (task "default") never shifts them.
    numbered = sorted({s.task for s in items if s.error is None})
    keep = list(by_task) if tasks is None else _resolve_tasks(spec, tasks, sorted(by_task), numbered)
    chosen: set[int] = set()
    for task in keep:
        group = by_task.get(task, [])
        if samples is not None and samples < len(group):
            picked = random.Random(seed).sample(range(len(group)), max(samples, 0))
            group = [group[i] for i in sorted(picked)]
        if not group:
            raise DataError(f"dataset {spec!r}: task {task!r} has no samples selected")
        chosen.update(id(s) for s in group)
    return [s for s in items if id(s) in chosen]


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


def _resolve_tasks(spec: str, wanted: list[str], names: list[str], numbered: list[str]) -> list[str]:
    """Task names for ``wanted`` entries: exact names first, then alphabetical task ids
    (indices into ``numbered``)."""
    out: list[str] = []
    for w in wanted:
        w = str(w).strip()
        if w in names:
            task = w
        elif w.isascii() and w.isdigit() and int(w) < len(numbered):
            task = numbered[int(w)]
        else:
            listing = ", ".join(f"{i} {n}" for i, n in enumerate(numbered))
            raise DataError(f"dataset {spec!r} has no task {w!r}; its tasks: {listing}")
        if task not in out:
            out.append(task)
    if not out:
        raise DataError(f"dataset {spec!r}: the task selection is empty")
    return out
