"""The interactive HTML report of a run: one self-contained file, no network.

Everything is inline: the CSS, a small vanilla JavaScript renderer (below, :data:`SCRIPT`)
that draws each :class:`~vlmflow.report.Chart` as SVG small multiples from JSON embedded
in the page, and the PNG figures as data URLs. Interactions: hover a panel for the values
of every visible curve at the nearest layer; click a legend entry to hide or show a curve
(in every panel of the chart), "all"/"none" to show or hide them all; pick the plotted
value with the selector; click a table header to sort. No library is loaded, so the file
opens the same way offline, in a browser's file viewer or attached to an e-mail.

Opening the file with ``#selftest`` appended to its URL makes the script exercise the
first chart (a hover and a legend toggle) and write what it saw as JSON into
``<pre id="selftest">``; tests/test_report.py reads it from headless Chromium's DOM.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..rundir import RunDir

MAX_TABLE_ROWS = 500
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")


def write_report(run: RunDir, records: pd.DataFrame, result: dict[str, Any]) -> Path:
    """Write the run's ``report.html`` from ``finalize``'s ``result`` and return its path."""
    from . import Bars

    manifest = run.manifest()
    config = manifest.get("config", {})
    sections = result.get("sections", [])
    charts: list[dict[str, Any]] = []
    body: list[str] = []
    toc = [("overview", "Overview"), ("accuracy", "Accuracy")]

    body.append(_overview(manifest, records, result.get("samples") or run.counts()))
    acc = result.get("accuracy")
    body.append(
        "<section id='accuracy'><h2>Accuracy</h2>"
        "<p class='note'>The model's own answer (argmax over the vocabulary at the last position) "
        "against the ground truth, per task, before any intervention; <i>unanswered</i>: samples whose "
        "answer could not be read (they fail every analysis), left out of the accuracy.</p>"
        f"{_accuracy_bars(acc)}{_table(acc)}</section>"
    )
    for section in sections:
        anchor = f"sec-{_slug(section.key)}"
        toc.append((anchor, section.title))
        parts = [f"<section id='{anchor}'><h2>{_e(section.title)}</h2>"]
        if section.notes:
            parts.append(f"<p class='note'>{_e(section.notes)}</p>")
        for chart in section.charts:
            if isinstance(chart, Bars):
                parts.append(f"<h3>{_e(chart.title)}</h3>{_bars(chart)}")
                continue
            spec = _chart_spec(chart, f"chart{len(charts)}")
            if spec is None:
                continue
            charts.append(spec)
            parts.append(
                f"<div class='chart' id='{spec['id']}'><h3>{_e(chart.title)}</h3>"
                + (f"<p class='note'>{_e(chart.note)}</p>" if chart.note else "")
                + "</div>"
            )
        if section.figures:
            parts.append("<details><summary>Static figures (PNG)</summary>")
            for title, path in section.figures.items():
                data = base64.b64encode(Path(path).read_bytes()).decode()
                parts.append(
                    f"<figure><img alt='{_e(title)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{_e(title)} ({_e(Path(path).name)})</figcaption></figure>"
                )
            parts.append("</details>")
        for name, table in section.summaries.items():
            parts.append(
                f"<details><summary>Summary table <code>summary/{_e(name)}.csv</code> "
                f"({len(table)} rows)</summary>{_table(table)}</details>"
            )
        if not section.charts and not section.summaries:
            parts.append("<p class='note'>No summary for these records.</p>")
        parts.append("</section>")
        body.append("".join(parts))

    toc += [("failed", "Failed samples"), ("manifest", "Manifest")]
    body.append(_failed(records, manifest))
    body.append(
        "<section id='manifest'><h2>Manifest</h2><details><summary>manifest.json</summary><pre>"
        + _e(json.dumps(manifest, indent=2))
        + "</pre></details></section>"
    )
    nav = "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t in toc)
    title = f"vlmflow: {config.get('model', '')} on {config.get('data', '')}"
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>vlmflow report</h1><p class='sub'>{_e(str(config.get('model', '')))} on "
        f"{_e(str(config.get('data', '')))}</p><nav>{nav}</nav></header><main>"
        + "".join(body)
        + "</main><div id='tooltip' class='tooltip' hidden></div>"
        "<div id='js-errors' hidden></div><pre id='selftest' hidden></pre>"
        f"<script type='application/json' id='chart-data'>{_json(charts)}</script>"
        f"<script>{SCRIPT}</script></body></html>"
    )
    from ..store import write_text_atomic

    out = run.report_path
    write_text_atomic(out, page)  # a failed write keeps the previous report whole
    return out


# --------------------------------------------------------------------------- pieces


def _overview(manifest: dict[str, Any], records: pd.DataFrame, samples: dict[str, Any]) -> str:
    """The run at a glance; ``samples``: its counts from the records (the manifest's may be stale)."""
    from . import samples_text

    config = manifest.get("config", {})
    sessions = manifest.get("sessions", [])
    versions = manifest.get("versions", {})
    model = manifest.get("model", {})
    prov = manifest.get("provenance", {})
    present = sorted(set(records["analysis"]) - {"eval"}) if "analysis" in records else []
    analyses = ", ".join(sorted(config.get("analyses", {})) or present) or "eval only"
    weights = (prov.get("model") or {}).get("weights_sha256") or model.get("revision") or "n/a"
    cards = [
        ("model", config.get("model", "")),
        ("data", config.get("data", "")),
        ("analyses", analyses),
        (
            "samples",
            samples_text(samples),
        ),
        ("records", f"{len(records)}"),
        ("processes", _processes(sessions)),
        ("started", manifest.get("started_at", "")),
        ("finished", manifest.get("finished_at", "")),
        ("weights", str(weights)[:16]),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
    ]
    items = "".join(f"<div class='card'><b>{_e(k)}</b><span>{_e(str(v))}</span></div>" for k, v in cards)
    return f"<section id='overview'><h2>Overview</h2><div class='cards'>{items}</div></section>"


def _processes(sessions: list[dict[str, Any]]) -> str:
    """The process counts of the run's sessions in order, a repeat said once: ``"2, then 1"``
    for a session on 2 processes (stopped, say) resumed on one; ``"1"`` without sessions."""
    counts: list[int] = []
    for session in sessions:
        n = int(session.get("world_size", 1) or 1)
        if not counts or counts[-1] != n:
            counts.append(n)
    return ", then ".join(str(n) for n in counts) or "1"


def _accuracy_bars(acc: pd.DataFrame | None) -> str:
    """A horizontal bar per task (inline SVG, drawn here: it needs no interaction)."""
    if acc is None or acc.empty or "accuracy" not in acc:
        return ""
    rows = [r for r in acc.itertuples(index=False) if not _isnan(r.accuracy)]
    if not rows:
        return ""
    label_w, bar_w, h = 190, 420, 22
    height = h * len(rows) + 28
    parts = [
        f"<svg class='bars' role='img' aria-label='accuracy per task' width='{label_w + bar_w + 150}' "
        f"height='{height}' viewBox='0 0 {label_w + bar_w + 150} {height}'>"
    ]
    for i, r in enumerate(rows):
        y = 6 + i * h
        w = max(0.0, min(1.0, float(r.accuracy))) * bar_w
        unanswered = int(getattr(r, "unanswered", 0) or 0)
        # the accuracy is over the samples answered; the unanswered ones are said apart
        n = f"n={int(r.n) - unanswered}" + (f", {unanswered} unanswered" if unanswered else "")
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 14}' text-anchor='end'>{_e(str(r.task))}</text>"
            f"<rect x='{label_w}' y='{y + 2}' width='{bar_w}' height='{h - 6}' class='track'/>"
            f"<rect x='{label_w}' y='{y + 2}' width='{w:.1f}' height='{h - 6}' class='bar'>"
            f"<title>{_e(str(r.task))}: {float(r.accuracy):.3f} ({n})</title></rect>"
            f"<text x='{label_w + bar_w + 6}' y='{y + 14}'>{float(r.accuracy):.2f} ({n})</text>"
        )
    y = 6 + len(rows) * h + 14
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * bar_w
        parts.append(f"<text x='{x:.1f}' y='{y}' text-anchor='middle' class='tick'>{t:g}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _bars(bars: Any) -> str:
    """Grouped horizontal bars (inline SVG): a group per row, a coloured bar per value."""
    values = [(label, v, e) for label, (v, e) in bars.values.items() if v in bars.data]
    data = bars.data
    if data.empty or not values:
        return "<p><em>none</em></p>"
    nums = [_num(x) for _, v, _ in values for x in data[v]]
    lo, hi = bars.limits or (
        min(0.0, *[x for x in nums if x is not None]),
        max(1e-9, *[x for x in nums if x]),
    )
    label_w, bar_w, bh = 170, 420, 13
    group_h = bh * len(values) + 10
    legend_h = 18 * len(values) + 6
    height = legend_h + group_h * len(data) + 24
    width = label_w + bar_w + 150
    out = [f"<svg class='bars' role='img' width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"]
    for j, (label, _, _) in enumerate(values):
        out.append(
            f"<rect x='{label_w}' y='{4 + 18 * j}' width='12' height='12' "
            f"fill='{PALETTE[j % len(PALETTE)]}'/>"
            f"<text x='{label_w + 18}' y='{14 + 18 * j}'>{_e(label)}</text>"
        )
    for i, row in enumerate(data.to_dict("records")):
        y0 = legend_h + i * group_h
        name = _e(row[bars.label])
        out.append(f"<text x='{label_w - 6}' y='{y0 + group_h / 2 + 3:.1f}' text-anchor='end'>{name}</text>")
        for j, (label, v, e) in enumerate(values):
            x = _num(row.get(v))
            if x is None:
                continue
            err = _num(row.get(e)) if e else None
            w = max(0.0, (x - lo) / (hi - lo)) * bar_w
            y = y0 + 4 + j * bh
            tip = f"{row[bars.label]} - {label}: {x:.4g}" + (f" (sd {err:.3g})" if err is not None else "")
            out.append(
                f"<rect x='{label_w}' y='{y}' width='{bar_w}' height='{bh - 2}' class='track'/>"
                f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bh - 2}' "
                f"fill='{PALETTE[j % len(PALETTE)]}'><title>{_e(tip)}</title></rect>"
                f"<text x='{label_w + w + 4:.1f}' y='{y + bh - 3}' class='tick'>{x:.3g}</text>"
            )
            if err:
                a, b = (
                    max(0.0, (x - err - lo) / (hi - lo)) * bar_w,
                    min(1.0, (x + err - lo) / (hi - lo)) * bar_w,
                )
                yc = y + (bh - 2) / 2
                out.append(
                    f"<line x1='{label_w + a:.1f}' x2='{label_w + b:.1f}' y1='{yc}' y2='{yc}' class='err'/>"
                )
    y = legend_h + group_h * len(data) + 14
    for k in range(5):
        t = lo + (hi - lo) * k / 4
        x = label_w + bar_w * k / 4
        out.append(f"<text x='{x:.1f}' y='{y}' text-anchor='middle' class='tick'>{t:.3g}</text>")
    out.append("</svg>")
    note = f"<p class='note'>{_e(bars.note)}</p>" if bars.note else ""
    return note + "".join(out)


def _failed(records: pd.DataFrame, manifest: dict[str, Any]) -> str:
    head = "<section id='failed'><h2>Failed samples</h2>"
    if "error" not in records or records["error"].notna().sum() == 0:
        return head + "<p class='note'>None: every sample was analysed without error.</p></section>"
    failed = records[records["error"].notna()]
    cols = [c for c in ("sample_id", "task", "analysis", "error") if c in failed]
    table = failed[cols].drop_duplicates(["sample_id", "error"])
    n = failed["sample_id"].nunique()
    return (
        head + f"<p class='note'>{n} sample(s) failed; their error is recorded and the run went on. "
        "Re-running the same command retries them (their failure is replaced by the new attempt); "
        "add --no-retry-failed to keep them as they are.</p>" + _table(table) + "</section>"
    )


def _chart_spec(chart: Any, chart_id: str) -> dict[str, Any] | None:
    """The JSON the script draws: series names, values, and per panel the curves' points."""
    data = chart.data
    values = [(label, m, b) for label, (m, b) in chart.values.items() if m in data]
    if data.empty or chart.x not in data or not values:
        return None
    series_cols = [c for c in chart.series if c in data]
    panel_col = chart.panel if chart.panel in data else None
    data = data.sort_values([c for c in [panel_col, *series_cols, chart.x] if c])

    def name_of(key: Any) -> str:
        key = key if isinstance(key, tuple) else (key,)
        return " / ".join(str(k) for k in key) if series_cols else "mean"

    series = ["mean"]
    if series_cols:
        series = [name_of(k) for k, _ in data.groupby(series_cols, sort=True, dropna=False)]
    panels = []
    for pkey, pdata in data.groupby(panel_col, sort=True, dropna=False) if panel_col else [(None, data)]:
        curves = []
        groups = pdata.groupby(series_cols, sort=True, dropna=False) if series_cols else [(None, pdata)]
        for skey, sdata in groups:
            curve = {
                "s": series.index(name_of(skey)),
                "x": [_num(x + chart.x_offset) for x in sdata[chart.x]],
                "y": [[_num(v) for v in sdata[m]] for _, m, _ in values],
                "b": [_band(sdata, m, b) for _, m, b in values],
                "h": {h: [_num(v) for v in sdata[h]] for h in chart.hover if h in sdata},
            }
            curves.append(curve)
        name = "" if pkey is None else str(pkey[0] if isinstance(pkey, tuple) else pkey)
        if "n" in pdata:
            name += f" (n={int(pdata['n'].max())})" if name else f"n={int(pdata['n'].max())}"
        panels.append({"name": name, "curves": curves})
    return {
        "id": chart_id,
        "title": chart.title,
        "xlabel": chart.xlabel,
        "values": [label for label, _, _ in values],
        "series": series,
        "panels": panels,
        "zero": chart.zero_line,
        "limits": list(chart.limits) if chart.limits else None,
    }


def _band(data: pd.DataFrame, value: str, band: Any) -> list[list[float | None]] | None:
    """A chart band as ``[lower, upper]`` point lists: ``band`` is a ``(lower, upper)`` pair of
    columns or one column of half-widths around ``value``; None when absent."""
    if isinstance(band, (tuple, list)) and all(c in data for c in band):
        lo, hi = (data[c] for c in band)
    elif isinstance(band, str) and band in data:
        lo, hi = data[value] - data[band], data[value] + data[band]
    else:
        return None
    return [[_num(v) for v in lo], [_num(v) for v in hi]]


def _table(df: pd.DataFrame | None) -> str:
    if df is None or df.empty:
        return "<p><em>none</em></p>"
    note = ""
    if len(df) > MAX_TABLE_ROWS:
        note = f"<p class='note'>first {MAX_TABLE_ROWS} of {len(df)} rows; the CSV holds all.</p>"
        df = df.head(MAX_TABLE_ROWS)
    table = df.to_html(  # a missing value reads "n/a", as in the charts (the CSV leaves it empty)
        index=False, float_format=lambda x: f"{x:.4g}", na_rep="n/a", classes="tbl sortable", border=0
    )
    return note + table


def _num(v: Any) -> float | int | None:
    if v is None or isinstance(v, str):
        return None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else round(f, 6)


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _json(obj: Any) -> str:
    """JSON safe inside a <script> element: ``<``, ``>`` and ``&`` are written as the JSON
    escapes ``\\u003c``, ``\\u003e``, ``\\u0026`` (the same string once parsed), so no text (a
    task named ``<!--<script>`` or ``</script>``) can end the element early or put the HTML
    parser in its script-escape states, where the element would swallow the page's script."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())


STYLE = """
:root{--fg:#1d2430;--muted:#5d6778;--line:#e3e6eb;--bg:#fff;--accent:#3867d6}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);margin:0;
  background:#f6f7f9}
header{background:var(--bg);border-bottom:1px solid var(--line);padding:14px 24px 8px;
  position:sticky;top:0;z-index:5}
h1{font-size:20px;margin:0}
.sub{margin:2px 0 6px;color:var(--muted)}
nav a{margin-right:14px;color:var(--accent);text-decoration:none;font-size:13px}
main{max-width:1240px;margin:0 auto;padding:8px 24px 60px}
section{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:6px 18px 14px;
  margin:16px 0}
h2{font-size:17px;margin:10px 0}
h3{font-size:14px;margin:14px 0 4px}
.note{color:var(--muted);margin:4px 0 8px;max-width:900px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 10px;overflow-wrap:anywhere}
.card b{display:block;font-size:11px;text-transform:uppercase;color:var(--muted);letter-spacing:.04em}
.tbl{border-collapse:collapse;font-size:12px;margin:6px 0}
.tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid var(--line);text-align:right}
.tbl th{cursor:pointer;background:#fafbfc;position:sticky;top:0}
.tbl td:first-child,.tbl th:first-child{text-align:left}
pre{background:#f6f7f9;padding:10px;overflow:auto;font-size:12px}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent)}
figure{margin:8px 0}
img{max-width:100%;border:1px solid var(--line)}
figcaption{color:var(--muted);font-size:12px}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin:4px 0 6px}
.controls select{font:inherit;padding:1px 4px}
.legend-item{border:1px solid var(--line);background:#fff;border-radius:12px;padding:1px 9px;
  font:12px system-ui,sans-serif;cursor:pointer}
.legend-item.off{opacity:.35;text-decoration:line-through}
.legend-item i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;
  vertical-align:-1px}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px}
svg.panel{background:#fff;border:1px solid var(--line);border-radius:6px;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:var(--fg)}
svg .tick{fill:var(--muted);font-size:10px}
svg .grid{stroke:#eef0f3}
svg .axis{stroke:#9aa3b1}
svg .zero{stroke:#9aa3b1;stroke-dasharray:3 3}
svg .curve{fill:none;stroke-width:1.8}
svg .band{stroke:none;opacity:.16}
svg .hover-line{stroke:#888;stroke-dasharray:2 2}
svg.bars .bar{fill:var(--accent)}
svg.bars .track{fill:#eef0f3}
svg.bars .err{stroke:#333;stroke-width:1.2}
.tooltip{position:absolute;z-index:10;background:rgba(255,255,255,.97);border:1px solid #c8ced8;
  border-radius:6px;padding:6px 8px;font-size:12px;pointer-events:none;
  box-shadow:0 2px 8px rgba(0,0,0,.12);max-width:420px}
.tooltip table{border-collapse:collapse}
.tooltip td{padding:0 4px;white-space:nowrap}
.tooltip i{display:inline-block;width:9px;height:9px;border-radius:2px}
#js-errors{color:#b00020;background:#fff0f0;padding:8px;margin:10px 24px}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c"];
  var W = 380, H = 250, M = {l: 54, r: 12, t: 22, b: 36};
  var tip = document.getElementById("tooltip");

  function fail(err) {
    var box = document.getElementById("js-errors");
    box.hidden = false;
    box.textContent += "report script error: " + (err && err.stack || err) + "\n";
  }
  window.addEventListener("error", function (ev) { fail(ev.error || ev.message); });

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function html(tag, cls, parent, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function color(i) { return COLORS[i % COLORS.length]; }
  function fmt(v) {
    if (v === null || v === undefined) { return "n/a"; }
    var a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 1e5) ? v.toExponential(2) : (+v.toPrecision(4)).toString();
  }
  function ticks(lo, hi, n) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(+v.toFixed(10)); }
    return out;
  }

  function Chart(spec) {
    this.spec = spec;
    this.root = document.getElementById(spec.id);
    this.value = 0;
    this.hidden = {};
    this.build();
    this.draw();
  }
  Chart.prototype.build = function () {
    var self = this, spec = this.spec;
    var bar = html("div", "controls", this.root);
    if (spec.values.length > 1) {
      html("span", "", bar, "value:");
      var sel = html("select", "", bar);
      spec.values.forEach(function (v, i) { var o = html("option", "", sel, v); o.value = i; });
      sel.addEventListener("change", function () { self.value = +sel.value; self.draw(); });
    }
    if (spec.series.length > 1) {
      ["all", "none"].forEach(function (what) {
        var b = html("button", "legend-item", bar, what);
        b.type = "button";
        b.addEventListener("click", function () {
          spec.series.forEach(function (_, i) { self.hidden[i] = what === "none"; });
          self.draw();
        });
      });
    }
    this.legend = spec.series.map(function (name, i) {
      var b = html("button", "legend-item", bar);
      b.type = "button";
      b.dataset.series = i;
      var sw = html("i", "", b);
      sw.style.background = color(i);
      b.appendChild(document.createTextNode(name));
      b.title = "click to hide or show";
      b.addEventListener("click", function () { self.hidden[i] = !self.hidden[i]; self.draw(); });
      return b;
    });
    this.panelBox = html("div", "panels", this.root);
  };
  Chart.prototype.visible = function (curve) { return !this.hidden[curve.s]; };
  Chart.prototype.draw = function () {
    var self = this, spec = this.spec, v = this.value;
    this.legend.forEach(function (b, i) { b.classList.toggle("off", !!self.hidden[i]); });
    var xs = [], ys = spec.zero ? [0] : [];
    spec.panels.forEach(function (p) {
      p.curves.forEach(function (c) {
        c.x.forEach(function (x, k) {
          xs.push(x);
          var y = c.y[v][k], lo = c.b[v] ? c.b[v][0][k] : null, hi = c.b[v] ? c.b[v][1][k] : null;
          if (!self.visible(c) || y === null) { return; }
          ys.push(lo === null ? y : lo, hi === null ? y : hi);
        });
      });
    });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    var y0 = ys.length ? Math.min.apply(null, ys) : 0, y1 = ys.length ? Math.max.apply(null, ys) : 1;
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    var pad = (y1 - y0) * 0.06, lim = spec.limits || [null, null];
    y0 -= pad;
    y1 += pad;
    if (lim[0] !== null) { y0 = Math.max(y0, lim[0]); }
    if (lim[1] !== null) { y1 = Math.min(y1, lim[1]); }
    var scale = {x0: x0, x1: x1, y0: y0, y1: y1};
    this.panelBox.textContent = "";
    spec.panels.forEach(function (p) { self.drawPanel(p, scale); });
  };
  Chart.prototype.drawPanel = function (panel, s) {
    var self = this, spec = this.spec, v = this.value;
    var svg = el("svg", {"class": "panel", width: W, height: H, viewBox: "0 0 " + W + " " + H},
                 this.panelBox);
    function X(x) { return M.l + (x - s.x0) / (s.x1 - s.x0) * (W - M.l - M.r); }
    function Y(y) {
      y = Math.min(Math.max(y, s.y0), s.y1);  // bands are clipped to the chart's limits
      return H - M.b - (y - s.y0) / (s.y1 - s.y0) * (H - M.t - M.b);
    }
    ticks(s.y0, s.y1, 5).forEach(function (t) {
      el("line", {"class": "grid", x1: M.l, x2: W - M.r, y1: Y(t), y2: Y(t)}, svg);
      el("text", {"class": "tick", x: M.l - 5, y: Y(t) + 3, "text-anchor": "end"}, svg).textContent = fmt(t);
    });
    ticks(s.x0, s.x1, 6).forEach(function (t) {
      if (Math.abs(t - Math.round(t)) > 1e-9) { return; }
      el("text", {"class": "tick", x: X(t), y: H - M.b + 14, "text-anchor": "middle"}, svg).textContent = t;
    });
    el("line", {"class": "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b}, svg);
    el("line", {"class": "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b}, svg);
    if (spec.zero && s.y0 < 0 && s.y1 > 0) {
      el("line", {"class": "zero", x1: M.l, x2: W - M.r, y1: Y(0), y2: Y(0)}, svg);
    }
    el("text", {x: M.l, y: 14}, svg).textContent = panel.name;
    var xl = el("text", {"class": "tick", x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle"}, svg);
    xl.textContent = spec.xlabel;
    var yl = el("text", {"class": "tick", x: 0, y: 0, "text-anchor": "middle",
                         transform: "translate(12," + (M.t + H - M.b) / 2 + ") rotate(-90)"}, svg);
    yl.textContent = spec.values[v];
    panel.curves.forEach(function (c) {
      if (!self.visible(c)) { return; }
      var col = color(c.s), ys = c.y[v], bs = c.b[v];
      var pts = [];
      c.x.forEach(function (x, k) {
        if (ys[k] !== null) { pts.push([x, ys[k], bs ? bs[0][k] : null, bs ? bs[1][k] : null]); }
      });
      if (!pts.length) { return; }
      if (bs) {
        var up = pts.map(function (p) {
          return X(p[0]).toFixed(1) + "," + Y(p[3] === null ? p[1] : p[3]).toFixed(1);
        });
        var lo = pts.slice().reverse().map(function (p) {
          return X(p[0]).toFixed(1) + "," + Y(p[2] === null ? p[1] : p[2]).toFixed(1);
        });
        el("path", {"class": "band", d: "M" + up.concat(lo).join("L") + "Z", fill: col, "data-series": c.s},
           svg);
      }
      var d = "M" + pts.map(function (p) { return X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); }).join("L");
      el("path", {"class": "curve", d: d, stroke: col, "data-series": c.s}, svg);
      pts.forEach(function (p) { el("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.4, fill: col}, svg); });
    });
    var guide = el("line", {"class": "hover-line", y1: M.t, y2: H - M.b, visibility: "hidden"}, svg);
    var hit = el("rect", {x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "transparent",
                          "class": "hit"}, svg);
    hit.addEventListener("mousemove", function (ev) {
      var box = svg.getBoundingClientRect();
      var px = (ev.clientX - box.left) * W / box.width;  // the SVG is scaled to its column
      var x = s.x0 + (px - M.l) / (W - M.l - M.r) * (s.x1 - s.x0);
      self.hover(panel, x, guide, X, ev);
    });
    hit.addEventListener("mouseleave", function () {
      guide.setAttribute("visibility", "hidden");
      tip.hidden = true;
    });
  };
  Chart.prototype.hover = function (panel, x, guide, X, ev) {
    var self = this, spec = this.spec, v = this.value, best = null;
    panel.curves.forEach(function (c) {
      c.x.forEach(function (cx) {
        if (best === null || Math.abs(cx - x) < Math.abs(best - x)) { best = cx; }
      });
    });
    if (best === null) { return; }
    guide.setAttribute("x1", X(best));
    guide.setAttribute("x2", X(best));
    guide.setAttribute("visibility", "visible");
    var rows = [];
    panel.curves.forEach(function (c) {
      if (!self.visible(c)) { return; }
      var k = c.x.indexOf(best);
      if (k < 0) { return; }
      var y = c.y[v][k], lo = c.b[v] ? c.b[v][0][k] : null, hi = c.b[v] ? c.b[v][1][k] : null;
      var extra = Object.keys(c.h).map(function (h) { return h + "=" + fmt(c.h[h][k]); }).join(" ");
      var band = lo !== null && hi !== null ? " [" + fmt(lo) + ", " + fmt(hi) + "]" : "";
      rows.push("<tr><td><i style='background:" + color(c.s) + "'></i></td><td>" + esc(spec.series[c.s]) +
                "</td><td><b>" + fmt(y) + "</b>" + band + "</td><td>" + esc(extra) + "</td></tr>");
    });
    tip.innerHTML = "<div><b>" + esc(panel.name) + "</b> &middot; " + esc(spec.xlabel) + " " + best +
      "</div><div>" + esc(spec.values[v]) + "</div><table>" + rows.join("") + "</table>";
    tip.hidden = false;
    tip.style.left = (window.scrollX + ev.clientX + 14) + "px";
    tip.style.top = (window.scrollY + ev.clientY + 10) + "px";
  };
  function esc(t) {
    return String(t).replace(/[&<>"']/g, function (ch) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch];
    });
  }

  function sortable(table) {
    var heads = table.querySelectorAll("th");
    heads.forEach(function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var dir = th.dataset.dir === "asc" ? -1 : 1;
        heads.forEach(function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir === 1 ? "asc" : "desc";
        rows.sort(function (a, b) {
          var p = a.cells[col].textContent, q = b.cells[col].textContent;
          var np = parseFloat(p), nq = parseFloat(q);
          var c = !isNaN(np) && !isNaN(nq) ? np - nq : p.localeCompare(q);
          return c * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function selftest(charts) {
    var out = {charts: charts.length, panels: document.querySelectorAll("svg.panel").length};
    var first = charts[0];
    if (first) {
      var hit = first.root.querySelector("rect.hit"), box = hit.getBoundingClientRect();
      hit.dispatchEvent(new MouseEvent("mousemove", {clientX: box.left + box.width / 2,
                                                     clientY: box.top + box.height / 2, bubbles: true}));
      out.tooltip = tip.hidden ? null : tip.textContent;
      out.curvesBefore = first.root.querySelectorAll("path.curve").length;
      if (first.legend.length) { first.legend[0].click(); }
      out.curvesAfterToggle = first.root.querySelectorAll("path.curve").length;
      if (first.legend.length) { first.legend[0].click(); }
      out.curvesRestored = first.root.querySelectorAll("path.curve").length;
    }
    var box = document.getElementById("selftest");
    box.textContent = JSON.stringify(out);
  }

  function main() {
    var specs = JSON.parse(document.getElementById("chart-data").textContent);
    var charts = specs.map(function (spec) { return new Chart(spec); });
    document.querySelectorAll("table.sortable").forEach(sortable);
    document.body.setAttribute("data-charts-rendered", String(charts.length));
    if (location.hash === "#selftest") { selftest(charts); }
  }
  try { main(); } catch (err) { fail(err); }
})();
"""
