"""A self-contained HTML report of a run (figures inlined, tables, failures, manifest)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd


def _table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>none</em></p>"
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", classes="tbl", border=0)


def write_report(run_dir: Path, records: pd.DataFrame, result: dict[str, Any]) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vlmflow report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}.tbl{border-collapse:collapse;font-size:13px}"
        ".tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}</style></head><body>",
        f"<h1>vlmflow report</h1><p>{html.escape(str(manifest.get('config', {}).get('model', '')))} on "
        f"{html.escape(str(manifest.get('config', {}).get('data', '')))}</p>",
        "<h2>Accuracy</h2>",
        _table(result.get("accuracy")),
    ]
    for title, path in result.get("figures", {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(
            f"<h2>{html.escape(title)}</h2>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    if "error" in records:
        failed = records[records["error"].notna()][["sample_id", "task", "analysis", "error"]]
        failed = failed.drop_duplicates(["sample_id", "error"])
        parts += ["<h2>Failed samples</h2>", _table(failed)]
    parts += ["<h2>Manifest</h2><pre>", html.escape(json.dumps(manifest, indent=2)), "</pre></body></html>"]
    out = run_dir / "report.html"
    out.write_text("".join(parts), encoding="utf-8")
    return out
