"""Summaries, figures and the HTML report of a run; everything here only reads records.

:func:`finalize` reads every record of a run (all shards of all ranks, so it is also the
merge of a multi-process run) and writes the merged records, the summary tables, the
figures and the HTML report into the run folder (:class:`~vlmflow.rundir.RunDir`). The
report has a fixed frame (the run at a glance, accuracy, failed samples, the manifest) and
one :class:`Section` per analysis found in the records, in the order of the analyses'
registry (:func:`vlmflow.analyses.base.ordered`).

An analysis unit builds its own section (:meth:`vlmflow.analyses.base.Analysis.section`,
figures included, from its stored records). Records of an analysis that is no registered
unit can get a section by registering a function under the analysis's name::

    from vlmflow.report import Chart, Section, report_section

    @report_section("answer-prob", "true vs false option probability per layer")
    def _answer_prob_section(records: pd.DataFrame, figures_dir: Path) -> Section:
        summary = ...  # e.g. per task x option x layer: n, p_mean, p_ci95_lo, p_ci95_hi
        return Section(
            "Answer probability by layer",
            summaries={"answer-prob": summary},                    # -> summary/answer-prob.csv
            charts=[Chart("p(option)", summary, {"p": ("p_mean", ("p_ci95_lo", "p_ci95_hi"))},
                          series=("option",))],
        )

``records`` are the analysis's rows without failed samples' rows. ``charts`` may also hold
:class:`Bars` (grouped bars, for summaries without layers). The function may instead
return a DataFrame or a dict of DataFrames (saved as summaries and charted by the rules of
:func:`charts_for`), or ``None`` to show nothing. An analysis with no registered
function still gets a section: :func:`summarize_layers` (mean and 95% CI of its numeric
columns per task, condition and layer) charted the same generic way. A section function
that raises is reported inside its section (with the generic view) instead of losing the
report of a long run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..registry import Registry
from ..store import StoreError, refuses_write, store_error

if TYPE_CHECKING:
    from ..lock import FolderLock
    from ..rundir import RunDir

__all__ = [
    "Bars",
    "Chart",
    "SECTIONS",
    "Section",
    "accuracy_table",
    "charts_for",
    "ci95_bounds",
    "finalize",
    "mean_ci",
    "report_section",
    "summarize_layers",
    "value_counts",
]

log = logging.getLogger(__name__)

# Record columns that are bookkeeping, never a condition or a value to summarise.
BOOKKEEPING = {"sample_id", "analysis", "model", "error", "plan", "_attempt", "task", "layer"}


@dataclass
class Chart:
    """An interactive chart of curves over layers, for the HTML report.

    ``data`` has one row per point (long form). Each distinct combination of the
    ``series`` columns is one curve (toggled together in every panel), drawn in one small
    panel per value of ``panel`` (``None``: a single panel). x is the ``x`` column plus
    ``x_offset`` (layers are 0-based in records and shown 1-based, like the paper).
    ``values`` maps a label to ``(value column, band)``: the band is ``None``, a pair of
    columns ``(lower, upper)`` (the 95% CI's bounds, see :func:`ci95_bounds`) or one column
    of half-widths drawn around the curve; the report shows one value at a time with a
    selector. ``hover`` columns, when present, are added to the tooltip.
    ``limits`` bounds the y axis and clips bands, e.g. ``(0, 1)`` for probabilities (a
    band may otherwise reach below 0).
    """

    title: str
    data: pd.DataFrame
    values: dict[str, tuple[str, str | tuple[str, str] | None]]
    series: tuple[str, ...] = ()
    panel: str | None = "task"
    x: str = "layer"
    x_offset: int = 1
    xlabel: str = "layer"
    hover: tuple[str, ...] = ("n",)
    zero_line: bool = True
    limits: tuple[float | None, float | None] | None = None
    note: str = ""


@dataclass
class Bars:
    """A grouped bar chart for the HTML report (drawn as static SVG, values on hover).

    One group of bars per row of ``data`` (named by its ``label`` column); one bar per
    ``values`` entry: label -> (value column, error-bar half-width column or None).
    ``limits``: the value axis, e.g. ``(0, 1)`` for accuracies; ``None`` fits the data.
    """

    title: str
    data: pd.DataFrame
    label: str
    values: dict[str, tuple[str, str | None]]
    limits: tuple[float, float] | None = (0.0, 1.0)
    note: str = ""


@dataclass
class Section:
    """One analysis's part of the report.

    ``summaries``: name -> table, each written to ``summary/<name>.csv`` and shown
    (collapsed) under the charts; ``charts``: interactive charts; ``figures``: title ->
    PNG path (also inlined in the report); ``notes``: a paragraph of plain text.
    """

    title: str
    summaries: dict[str, pd.DataFrame] = field(default_factory=dict)
    charts: list[Chart | Bars] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    notes: str = ""
    key: str = ""
    failed: bool = False  # its own builder raised: the generic view is shown instead


SectionFn = Callable[[pd.DataFrame, Path], Any]
SECTIONS: Registry[SectionFn] = Registry("report section")
report_section = SECTIONS.register


def accuracy_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per task (from the ``eval`` records): ``n`` samples, ``unanswered`` (those whose
    answer could not be read: the sample failed before any analysis) and the baseline
    ``accuracy`` over the others. Not called "failed": the run's "N failed" (the terminal,
    the report's samples line and Failed samples) counts samples with any failed unit,
    also those answered whose analysis failed."""
    ev = records[records["analysis"] == "eval"]
    if ev.empty:
        return pd.DataFrame(columns=["task", "n", "unanswered", "accuracy"])
    ok = ev[ev["error"].isna()]
    out = ev.groupby("task").agg(n=("sample_id", "size"))
    out["unanswered"] = ev.groupby("task")["error"].apply(lambda s: int(s.notna().sum()))
    if "correct" in ok:
        out["accuracy"] = ok.groupby("task")["correct"].apply(
            lambda s: float(pd.Series(s, dtype="float").mean())
        )
    else:
        out["accuracy"] = float("nan")
    if {"correct_ids", "correct_text"} <= set(ok.columns):
        # how often the token-id rule and the paper's decoded-text rule disagree
        both = ok.dropna(subset=["correct_ids", "correct_text"])
        differ = both["correct_ids"].astype(bool) != both["correct_text"].astype(bool)
        out["ids_vs_text_disagree"] = (
            differ.groupby(both["task"]).sum().reindex(out.index).fillna(0).astype(int)
        )
    return out.reset_index()


def finalize(
    run: str | Path | RunDir, *, html: bool = True, lock: FolderLock | None = None
) -> dict[str, Any]:
    """Write the run's merged records, summary tables, figures and ``report.html``
    (``html=False``: no ``report.html``, and an earlier one, which would no longer match the
    records, is removed, as stale summary tables and figures are).

    Returns ``records`` (the row count), ``samples`` (counted from the records, see
    :meth:`~vlmflow.rundir.RunDir.counts`), ``accuracy``, ``flow`` (the knockout summary, empty
    without flow records), ``figures`` (title -> PNG), ``sections``, ``summaries`` and
    ``report`` (path).

    Takes the run folder's lock for the time it writes (as ``vlmflow report`` and ``merge``
    do): a folder that a run is still writing is refused with a ``RunError`` naming the
    holder. ``lock`` is the folder's lock when the caller already holds it (a run that
    reports at its end); it stays held.
    """
    from ..rundir import RunDir

    run = run if isinstance(run, RunDir) else RunDir(run)
    if lock is not None:  # the caller's: taken if it is not yet (idempotent), left held
        lock.acquire()
        return _finalize(run, html)
    if not run.manifest_path.exists():
        run.require()  # not a run folder: a RunError naming it, before the lock leaves run.lock there
    lock_file = run.lock().path
    made = not lock_file.exists()
    try:
        with run.lock():
            return _finalize(run, html)
    except BaseException:
        if made and not run.is_run():  # no run folder after all: leave it as it was found
            lock_file.unlink(missing_ok=True)
        raise


def _finalize(run: RunDir, html: bool) -> dict[str, Any]:
    """:func:`finalize`'s work, under the folder's lock."""
    from ..analyses.information_flow import task_sample_counts

    run.recover_manifest()  # damaged or lost: rebuilt, so every section reads the run's options
    records = run.records()
    if records.empty:
        _no_records_left(run)
        return {"records": 0}
    run.summary_dir.mkdir(exist_ok=True)
    run.figures_dir.mkdir(exist_ok=True)
    write_parquet(records, run.parquet_path)
    acc = accuracy_table(records)
    write_csv(acc, run.summary_path("accuracy"))
    written = {run.summary_path("accuracy")}
    ok = records[records["error"].isna()] if "error" in records else records
    configured = run.config().get("analyses", {})
    sections = []
    for name in report_order((set(ok["analysis"]) | set(configured)) - {"eval"}):
        rows = ok[ok["analysis"] == name]
        if rows.empty:  # run, but no sample kept (or every one failed): say so, not nothing
            sections.append(no_samples_section(name, records, configured.get(name) or {}, run))
            continue
        rows = rows[[c for c in rows.columns if c in BOOKKEEPING or rows[c].notna().any()]]
        rows.attrs["task_samples"] = task_sample_counts(records)
        section = build_section(name, rows, run)
        for key, table in section.summaries.items():
            write_csv(table, run.summary_path(key))
            written.add(run.summary_path(key))
        sections.append(section)
    flow = next((s.summaries.get("flow") for s in sections if s.key == "flow"), None)
    result: dict[str, Any] = {
        "records": len(records),
        "samples": run.counts(),
        "accuracy": acc,
        "flow": flow if flow is not None else pd.DataFrame(),
        "figures": {title: path for s in sections for title, path in s.figures.items()},
        "sections": sections,
        "summaries": {key: table for s in sections for key, table in s.summaries.items()},
    }
    if html:
        from .html import write_report

        result["report"] = write_report(run, records, result)
    else:  # an earlier report.html no longer matches the records just merged: removed
        run.report_path.unlink(missing_ok=True)
    if not any(s.failed for s in sections):  # a failed section's earlier files are kept whole
        _remove_stale(run, written | {Path(path) for s in sections for path in s.figures.values()})
    return result


def _report_files(run: RunDir) -> list[Path]:
    """The summary tables and figures an earlier report wrote (``summary/*.csv``,
    ``figures/**/*.png``)."""
    found = sorted(run.summary_dir.glob("*.csv")) if run.summary_dir.is_dir() else []
    return found + (sorted(run.figures_dir.rglob("*.png")) if run.figures_dir.is_dir() else [])


def _remove_stale(run: RunDir, written: set[Path]) -> None:
    """Remove the summary tables and figures of an earlier report that this one did not
    write (an analysis, a sample or a section no longer in the records), so the folder never
    shows results that its records no longer hold; folders left empty go too. Not called when
    a section's own builder failed: its earlier files then stay as they were."""
    keep = {p.resolve() for p in written}
    for path in _report_files(run):
        if path.resolve() not in keep:
            path.unlink(missing_ok=True)
    if run.figures_dir.is_dir():
        for folder in sorted((d for d in run.figures_dir.rglob("*") if d.is_dir()), reverse=True):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


def _no_records_left(run: RunDir) -> None:
    """The records read back empty: an earlier report's tables, figures and ``report.html``
    show results no record holds any more, so they are removed; its ``records.parquet``,
    which may be the last copy of them, is kept as ``records.parquet.old``."""
    _remove_stale(run, set())
    run.report_path.unlink(missing_ok=True)
    if run.parquet_path.exists():
        kept = run.parquet_path.with_name(run.parquet_path.name + ".old")
        run.parquet_path.replace(kept)
        log.warning(
            "%s holds no finished record: the earlier report's files were removed and its merged "
            "records kept as %s",
            run.records_dir,
            kept,
        )


def samples_text(samples: dict[str, Any]) -> str:
    """``"13 done, 0 failed, 17 missing of 30"`` from :meth:`~vlmflow.rundir.RunDir.counts`."""
    return (
        f"{samples.get('done', '?')} done, {samples.get('failed', '?')} failed"
        + (f", {samples['missing']} missing" if samples.get("missing") else "")
        + (f" of {samples['total']}" if samples.get("total") is not None else "")
    )


def report_order(names: set[str]) -> list[str]:
    """Analyses in the registry's order; records of unregistered ones follow alphabetically."""
    from ..analyses.base import ordered

    known = [cls.name for cls in ordered() if cls.name in names]
    return known + sorted(names - set(known))


def build_section(name: str, rows: pd.DataFrame, run: RunDir) -> Section:
    """The section of analysis ``name`` from its error-free ``rows`` (see the module doc)."""
    from ..analyses.base import ANALYSES, ordered

    ordered()  # every analysis unit registered
    if name in SECTIONS:
        build = lambda: SECTIONS.get(name)(rows, run.figures_dir)  # noqa: E731
    elif name in ANALYSES:
        build = lambda: ANALYSES.get(name).section(rows, run)  # noqa: E731
    else:
        return _as_section(name, summarize_layers(rows))
    try:
        return _as_section(name, build())
    except StoreError:  # the disk refused a figure or table: the report stops, not the section
        raise
    except Exception as exc:  # a broken summary must not cost the report of a long run
        if refuses_write(exc):  # a full disk met outside the store's writers: the same
            raise store_error(Path(getattr(exc, "filename", None) or run.figures_dir), exc) from exc
        log.warning("the report section of %r failed; showing the generic view", name, exc_info=True)
        section = _as_section(name, summarize_layers(rows))
        section.notes = f"The {name!r} section failed ({type(exc).__name__}: {exc}); generic view shown."
        section.failed = True
        return section


def no_samples_section(name: str, records: pd.DataFrame, config: dict[str, Any], run: RunDir) -> Section:
    """The section of analysis ``name`` that the run asked for but that has no error-free
    record: its usual title and a note saying why no sample is shown (its ``sample_mode``
    against the baseline answers, or the samples that failed)."""
    from ..analyses.base import ANALYSES, ordered

    ordered()
    title = name
    try:  # the section's own title, drawn from no rows
        empty = records.iloc[0:0]
        built = (
            SECTIONS.get(name)(empty, run.figures_dir)
            if name in SECTIONS
            else ANALYSES.get(name).section(empty, run)
        )
        title = built.title if isinstance(built, Section) else name
    except Exception:  # a section that cannot take no rows keeps the analysis's name
        log.debug("no title for the empty section %r", name, exc_info=True)
    ev = records[records["analysis"] == "eval"]
    if "error" in ev:
        ev = ev[ev["error"].isna()]
    mine = records[records["analysis"] == name]
    failed = mine[mine["error"].notna()]["sample_id"].nunique() if "error" in mine else 0
    reasons = []
    mode = config.get("sample_mode")
    if mode in ("correct", "wrong") and "correct" in ev:
        right = int(pd.Series(ev["correct"]).dropna().astype(bool).sum())
        kept = right if mode == "correct" else len(ev) - right
        how = "correctly" if mode == "correct" else "wrongly"
        reasons.append(
            f"sample_mode {mode!r} keeps only the samples the model answers {how}: {kept} of the "
            f"{len(ev)} evaluated (see Accuracy; --sample-mode all analyses every sample)"
        )
    if failed:
        reasons.append(f"{failed} sample{'s' if failed != 1 else ''} failed (see Failed samples)")
    why = "; ".join(reasons) or "no sample produced a record"
    return Section(title, notes=f"0 samples matched, so there is nothing to show: {why}.", key=name)


def _as_section(name: str, out: Any) -> Section:
    if isinstance(out, Section):
        section = out
    elif isinstance(out, pd.DataFrame):
        section = Section(name, summaries={name: out} if not out.empty else {})
    elif isinstance(out, dict):
        section = Section(name, summaries={k: v for k, v in out.items() if not v.empty})
    else:
        section = Section(name)
    section.key = section.key or name
    if not section.charts:
        for key, table in section.summaries.items():
            section.charts += charts_for(table, key if len(section.summaries) > 1 else section.title)
    return section


def charts_for(table: pd.DataFrame, title: str) -> list[Chart]:
    """Generic charts of a per-layer summary table, by its columns' names and types.

    Needs a ``layer`` column. Values: every ``<v>_mean`` column with ``<v>_ci95_lo`` and
    ``<v>_ci95_hi`` as its band, else every float column. Dimensions: the text columns;
    ``task`` gives the panels; with two or more others, the first splits the table into one
    chart per value and the rest name the curves.
    """
    if table.empty or "layer" not in table:
        return []
    means = [c for c in table.columns if c.endswith("_mean")]
    if means:
        values = {c[: -len("_mean")]: (c, ci95_columns(c[: -len("_mean")])) for c in means}
        values = {k: (m, b if set(b) <= set(table) else None) for k, (m, b) in values.items()}
    else:
        skip = {"layer", "n"} | {c for c in table.columns if c.endswith(("_ci95_lo", "_ci95_hi"))}
        values = {
            c: (c, None) for c in table.columns if c not in skip and pd.api.types.is_float_dtype(table[c])
        }
    if not values:
        return []
    dims = [
        c
        for c in table.columns
        if c not in ("layer", "task") and not pd.api.types.is_numeric_dtype(table[c]) and c not in values
    ]
    panel = "task" if "task" in table else None
    if len(dims) >= 2:
        split, series = dims[0], tuple(dims[1:])
        return [
            Chart(f"{title}: {v}", table[table[split] == v], values, series=series, panel=panel)
            for v in sorted(table[split].dropna().unique(), key=str)
        ]
    return [Chart(title, table, values, series=tuple(dims), panel=panel)]


def summarize_layers(rows: pd.DataFrame) -> pd.DataFrame:
    """Generic summary of an analysis's records: per task x condition x layer, ``n`` and the
    mean and 95% CI (``<v>_mean``, ``<v>_ci95_lo``, ``<v>_ci95_hi``) of every float or
    boolean column (``n`` counts values, not rows: see :func:`value_counts`).

    The condition columns are found from the data: the fewest text columns (few distinct
    values) that, with the sample and the layer, identify a row. Without a ``layer``
    column the summary is per task x condition.
    """
    if rows.empty:
        return pd.DataFrame()
    at = ["layer"] if "layer" in rows else []
    values = [c for c in rows.columns if c not in BOOKKEEPING and _is_value(rows[c])]
    if not values:
        return pd.DataFrame()
    texts = [c for c in rows.columns if c not in BOOKKEEPING and c not in values and _is_label(rows[c])]
    dims: list[str] = []
    key = ["sample_id", *at]
    while texts and rows.duplicated(key + dims).any():
        best = max(texts, key=lambda c: (len(rows.drop_duplicates(key + dims + [c])), -rows[c].nunique()))
        if len(rows.drop_duplicates(key + dims + [best])) == len(rows.drop_duplicates(key + dims)):
            break
        dims.append(best)
        texts.remove(best)
    keys = [c for c in ["task", *dims, *at] if c in rows]
    data = rows[keys + values].copy()
    for c in values:
        data[c] = pd.to_numeric(data[c].astype("float64"), errors="coerce")
    g = data.groupby(keys, dropna=False)
    out = value_counts(g, values)
    for c in values:
        out[f"{c}_mean"] = g[c].mean()
        out[list(ci95_columns(c))] = ci95_by_group(g[c])
    return out.reset_index()


def value_counts(grouped: Any, values: list[str]) -> pd.DataFrame:
    """Per group of a ``DataFrameGroupBy``: ``n``, the most values (not NaN) any of ``values``
    has, and ``n_<v>`` for each of ``values`` whose count differs from ``n`` in some group, so
    every mean is next to the number of values it averages (a NaN is skipped by the mean and
    the CI, so it is not counted either)."""
    counts = pd.DataFrame({v: grouped[v].count() for v in values})
    n = counts.max(axis=1).astype(int) if values else grouped.size()
    out = n.rename("n").to_frame()
    for v in values:
        if not counts[v].equals(n):
            out[f"n_{v}"] = counts[v].astype(int)
    return out


def mean_ci(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per ``keys``: ``n`` (the values, NaN not counted), ``<value>_mean`` and its 95% CI
    (``<value>_ci95_lo``, ``<value>_ci95_hi``) of a numeric column."""
    data = df[keys].copy()
    data[value] = pd.to_numeric(df[value], errors="coerce")
    g = data.groupby(keys, dropna=False)[value]
    out = g.agg(n="count")
    out[f"{value}_mean"] = g.mean()
    out[list(ci95_columns(value))] = ci95_by_group(g)
    return out.reset_index()


# The paper's curves are seaborn lineplots: their band is the default errorbar=("ci", 95),
# a percentile bootstrap of the mean with 1000 resamples (here from a fixed seed).
N_BOOT = 1000
BOOT_SEED = 0


def ci95_bounds(x: Any, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float]:
    """``(lower, upper)`` of the 95% percentile-bootstrap CI of the mean of ``x`` (NaNs
    dropped; one value: both bounds equal it; none: NaN)."""
    v = pd.to_numeric(pd.Series(x, dtype="float64"), errors="coerce").dropna().to_numpy()
    if len(v) <= 1:
        return (float(v[0]), float(v[0])) if len(v) else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(v))  # resamples drawn at once, to bound memory
    sizes = [min(chunk, n_boot - i) for i in range(0, n_boot, chunk)]
    means = np.concatenate([v[rng.integers(0, len(v), (k, len(v)))].mean(axis=1) for k in sizes])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def ci95_columns(value: str) -> tuple[str, str]:
    """The names of ``value``'s CI bounds in a summary: ``<value>_ci95_lo``, ``<value>_ci95_hi``."""
    return f"{value}_ci95_lo", f"{value}_ci95_hi"


def ci95_by_group(grouped: Any) -> np.ndarray:
    """:func:`ci95_bounds` of each group of a ``SeriesGroupBy``, in the order of its
    aggregates: an ``(groups, 2)`` array of lower and upper bounds."""
    bounds = grouped.apply(ci95_bounds)
    return np.array(bounds.tolist(), dtype="float64").reshape(-1, 2)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """``table.to_csv`` replacing ``path`` all at once (see :func:`vlmflow.store.replacing`)."""
    from ..store import replacing

    with replacing(path) as tmp:
        table.to_csv(tmp, index=False)


def write_parquet(records: pd.DataFrame, path: Path) -> None:
    """``records.to_parquet``, made to succeed for any records: when Arrow cannot store a
    column as it is (dict-valued fields, e.g. ``{}`` has no Parquet type, or one field
    holding numbers in some rows and text in others), such columns are stored as JSON
    text, and if that is not enough every non-text object column is. ``path`` is replaced
    all at once: a failed write leaves the previous file (see :func:`vlmflow.store.replacing`)."""
    from ..store import replacing

    with replacing(path) as tmp:
        _write_parquet(records, tmp)


def _write_parquet(records: pd.DataFrame, path: Path) -> None:
    import json

    try:
        records.to_parquet(path, index=False)
        return
    except Exception as first:  # pyarrow's errors (ArrowInvalid, ArrowNotImplementedError, ...)
        log.debug("records.parquet: storing awkward columns as JSON text (%s)", first)

    def as_json(col: pd.Series) -> list[Any]:
        return [
            None if v is None or _isnan(v) else v if isinstance(v, str) else json.dumps(v, default=str)
            for v in col
        ]

    fixed = records.copy()
    for c in fixed.columns:
        if fixed[c].dtype == object:
            kinds = {type(v) for v in fixed[c] if v is not None and not _isnan(v)}
            if len(kinds) > 1 or dict in kinds:
                fixed[c] = as_json(fixed[c])
    try:
        fixed.to_parquet(path, index=False)
    except Exception:  # last resort: every object column that is not plain text
        for c in fixed.columns:
            if fixed[c].dtype == object:
                fixed[c] = as_json(fixed[c])
        fixed.to_parquet(path, index=False)


def _is_value(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_float_dtype(s):
        return True
    if s.dtype == object:
        v = s.dropna()
        return len(v) > 0 and all(isinstance(x, bool) for x in v)
    return False


def _is_label(s: pd.Series) -> bool:
    v = s.dropna()
    return len(v) > 0 and all(isinstance(x, str) for x in v) and v.nunique() <= 24


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
