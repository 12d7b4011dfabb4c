"""The result store: append-only JSONL records per shard, resumable, crash-safe.

A *unit* is one (sample, analysis) pair. Its rows are appended to
``records/shard-RRRRR.jsonl`` tagged with a fresh attempt id, flushed and fsynced; then
one line naming the unit and attempt is appended to ``records/shard-RRRRR.done.jsonl``.
Reading keeps only rows whose (unit, attempt) is marked done, so a process killed in the
middle of a unit loses that unit only, and a resumed run that recomputes it never yields
duplicates.

Test hook: with ``VLMFLOW_TEST_SLEEP_AFTER_ROWS=SECONDS`` (or ``SECONDS:SAMPLE_ID`` to pause
on that sample's units only) a unit's rows are written, then the process sleeps before
writing its done marker, so a test can kill it exactly there (tests/test_store.py). It is
read at each write and does nothing when unset.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


class RecordStore:
    """Records of one run folder, written by shard ``rank``."""

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.dir = self.root / "records"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.rows_path = self.dir / f"shard-{rank:05d}.jsonl"
        self.done_path = self.dir / f"shard-{rank:05d}.done.jsonl"

    def done_units(self) -> set[tuple[str, str]]:
        """(sample_id, analysis) units finished in any shard of this run."""
        return {(d["sample_id"], d["analysis"]) for d in _read_markers(self.dir)}

    def write_unit(self, sample_id: str, analysis: str, rows: Iterable[dict[str, Any]]) -> None:
        attempt = uuid.uuid4().hex
        lines = []
        for row in rows:
            row = {**row, "sample_id": sample_id, "analysis": analysis, "_attempt": attempt}
            lines.append(json.dumps(row, default=_json_default))
        _append(self.rows_path, lines)
        _test_pause(sample_id)
        marker = {"sample_id": sample_id, "analysis": analysis, "_attempt": attempt, "rows": len(lines)}
        _append(self.done_path, [json.dumps(marker)])

    def read(self) -> pd.DataFrame:
        return read_records(self.root)


def _test_pause(sample_id: str) -> None:
    """The ``VLMFLOW_TEST_SLEEP_AFTER_ROWS`` hook (see the module docstring)."""
    hook = os.environ.get("VLMFLOW_TEST_SLEEP_AFTER_ROWS")
    if not hook:
        return
    seconds, _, only = hook.partition(":")
    if not only or only == sample_id:
        time.sleep(float(seconds))


def _append(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash; its unit has no done marker
    return out


def _read_markers(records_dir: Path) -> list[dict[str, Any]]:
    markers = []
    for path in sorted(records_dir.glob("shard-*.done.jsonl")):
        markers += _read_jsonl(path)
    return markers


def shard_status(run_dir: str | Path) -> dict[str, int]:
    """Finished units per shard file of a run (``{"shard-00000": 24, ...}``)."""
    records_dir = Path(run_dir) / "records"
    return {
        path.name.removesuffix(".done.jsonl"): len(_read_jsonl(path))
        for path in sorted(records_dir.glob("shard-*.done.jsonl"))
    }


def read_records(run_dir: str | Path) -> pd.DataFrame:
    """Every finished record of a run (all shards), as one DataFrame."""
    records_dir = Path(run_dir) / "records"
    if not records_dir.is_dir():
        return pd.DataFrame()
    latest: dict[tuple[str, str], str] = {}
    for m in _read_markers(records_dir):
        latest[(m["sample_id"], m["analysis"])] = m["_attempt"]
    keep = set(latest.values())
    rows = []
    for path in sorted(records_dir.glob("shard-*.jsonl")):
        if path.name.endswith(".done.jsonl"):
            continue
        rows += [r for r in _read_jsonl(path) if r.get("_attempt") in keep]
    df = pd.DataFrame(rows)
    return df.drop(columns=["_attempt"]) if "_attempt" in df else df
