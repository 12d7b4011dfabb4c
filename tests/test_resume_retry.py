"""Resuming a run (docs/reliability.md): a sample that failed is retried, its failure
superseded in the store (crash-safe, in any shard); running out of memory stops the run
like a full disk instead of failing the sample; and a run that stopped early counts a
sample as done only when every unit it asks for is finished, against the run's total."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.commands.test_cli import flow_args
from tests.data.benchfiles import video
from tests.test_store_reliability import TASKS, check_complete, cli_args, invoke
from vlmflow.data import load_dataset
from vlmflow.rundir import RunDir
from vlmflow.store import RecordStore, read_records, scan


def qa_item(sid: str, clip: str) -> dict:
    return {"id": sid, "video": clip, "question": "Which way?", "options": ["left", "right"], "answer": 1}


def markers(out: Path) -> list[dict]:
    done = out / "records" / "shard-00000.done.jsonl"
    return [json.loads(line) for line in done.read_text().splitlines()]


def rows_of(out: Path, sample_id: str) -> list[dict]:
    """The rows of ``sample_id``'s finished units, as stored (attempt ids included)."""
    found = scan(out / "records", keep_rows=True)
    return [r for u in sorted(found.units) if u[0] == sample_id for r in found.rows[found.units[u][0]]]


def test_a_failed_sample_is_retried_on_resume_and_its_failure_superseded(
    tiny_llava_path, tmp_path: Path
) -> None:
    """The bug report's case: a sample whose video is missing fails (recorded, the run goes
    on). Re-running with the video still missing retries it and leaves exactly one failure
    per unit, not two; ``--no-retry-failed`` keeps the failure; once the video exists the
    same command retries it again and the records show its real rows and no stale failure,
    while the sample that succeeded is never recomputed."""
    video(tmp_path / "good.mp4", 8)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(qa_item(s, f"{s}.mp4")) + "\n" for s in ("good", "late")))
    out = tmp_path / "run"
    args = flow_args(tiny_llava_path, qa, out, "-t", "cross-frame")

    first = invoke(args)
    assert first.exit_code == 0, first.output
    assert "done: 1 samples, 1 failed, 0 already done" in first.output
    good_rows = rows_of(out, "good")

    again = invoke(args)  # still missing: retried, fails again, one failure per unit
    assert again.exit_code == 0, again.output
    assert "done: 0 samples, 1 failed, 1 already done, retried 1 previously failed" in again.output
    late = RunDir(out).records().query("sample_id == 'late'")
    assert sorted(late["analysis"]) == ["eval", "flow"] and late["error"].notna().all()
    assert "late.mp4" in late["error"].iloc[0]

    kept = invoke([*args, "--no-retry-failed"])  # the old behaviour, on request
    assert kept.exit_code == 0, kept.output
    # the kept failure is no sample "already done" (it was counted as one)
    kept_line = "done: 0 samples, 0 failed, 1 already done, 1 failed before, kept (--no-retry-failed)"
    assert kept_line in kept.output
    assert len(markers(out)) == 6  # good: 2 units once; late: 2 units twice; nothing new

    video(tmp_path / "late.mp4", 8)
    fixed = invoke(args)
    assert fixed.exit_code == 0, fixed.output
    assert "done: 1 samples, 0 failed, 1 already done, retried 1 previously failed" in fixed.output
    records = RunDir(out).records()
    assert records["error"].isna().all()  # no stale failure row
    check_complete(out, ["good", "late"])
    assert rows_of(out, "good") == good_rows  # what succeeded is untouched
    assert [m["sample_id"] for m in markers(out)].count("good") == 2  # never recomputed
    counts = json.loads((out / "manifest.json").read_text())["samples"]
    assert (counts["done"], counts["failed"], counts["missing"], counts["failures"]) == (2, 0, 0, {})


def test_a_retry_supersedes_its_failure_in_any_shard_and_a_torn_retry_keeps_it(tmp_path: Path) -> None:
    """A failure in shard 1 retried by shard 0 (a resume on fewer processes; shard 0 is read
    first, so "the last marker read wins" alone would bring the failure back). Cut the
    retry's rows and marker at every byte: until its marker is whole the failure stands and
    is retried again; once whole, only the retry reads back. Nothing is rewritten in place."""
    RecordStore(tmp_path, 1).write_unit("s0", "eval", [{"error": "video missing"}])
    RecordStore(tmp_path, 0).write_unit("s1", "eval", [{"p": 0.5, "error": None}])
    failed = scan(tmp_path / "records").failed
    assert list(failed) == [("s0", "eval")]
    shard1 = {p.name: p.read_bytes() for p in (tmp_path / "records").glob("shard-00001*.jsonl")}

    store = RecordStore(tmp_path, 0)
    rows0, done0 = store.rows_path.read_bytes(), store.done_path.read_bytes()
    store.write_unit("s0", "eval", [{"p": 0.25, "error": None}], supersedes=failed[("s0", "eval")])
    rows1, done1 = store.rows_path.read_bytes(), store.done_path.read_bytes()
    assert rows1.startswith(rows0) and done1.startswith(done0)  # appended, never rewritten
    for name, data in shard1.items():
        assert (tmp_path / "records" / name).read_bytes() == data
    retried = read_records(tmp_path)
    assert retried.to_dict("records") == [
        {"p": 0.25, "error": None, "sample_id": "s0", "analysis": "eval"},
        {"p": 0.5, "error": None, "sample_id": "s1", "analysis": "eval"},
    ]

    cuts = [(r, len(done0)) for r in range(len(rows0), len(rows1) + 1)]
    cuts += [(len(rows1), d) for d in range(len(done0), len(done1) - 1)]  # (its last "\n" is spare)
    for r, d in cuts:
        store.rows_path.write_bytes(rows1[:r])
        store.done_path.write_bytes(done1[:d])
        found = scan(tmp_path / "records")
        assert found.error(("s0", "eval")) == "video missing", (r, d)  # the failure stands
        # what a resume does: retry it, superseding the failure it still sees
        store.write_unit("s0", "eval", [{"p": 0.25, "error": None}], supersedes=found.failed[("s0", "eval")])
        assert read_records(tmp_path).equals(retried), (r, d)
        assert scan(tmp_path / "records").failed == {}
    # a retry that fails again replaces the failure: one failure row, the newest
    store.rows_path.write_bytes(rows0)
    store.done_path.write_bytes(done0)
    store.write_unit("s0", "eval", [{"error": "still missing"}], supersedes=failed[("s0", "eval")])
    rows = read_records(tmp_path).query("sample_id == 's0'")
    assert rows["error"].tolist() == ["still missing"]


@pytest.mark.parametrize(
    "oom",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_stops_the_run_cleanly_and_it_resumes(
    tiny_llava_path, tmp_path: Path, monkeypatch, oom: Exception
) -> None:
    """Out of memory on the second sample (CUDA's ``torch.OutOfMemoryError``, which
    ``torch.cuda.OutOfMemoryError`` is, or the CPU allocator's) is no fault of the sample:
    the run stops with one line saying what to do, records no failure, keeps the first
    sample, says so in the manifest; the same command then finishes the run."""
    from vlmflow.analyses.information_flow import InformationFlow

    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    records, calls = InformationFlow.records, []

    def short_of_memory(self, probe):
        calls.append(1)
        if len(calls) == 2:
            raise oom
        return records(self, probe)

    monkeypatch.setattr(InformationFlow, "records", short_of_memory)
    out = tmp_path / "run"
    stopped = invoke(cli_args(tiny_llava_path, out))
    assert stopped.exit_code == 2, stopped.output
    assert "out of memory" in stopped.output and "while analysing sample " + ids[1] in stopped.output
    assert "--num-frames" in stopped.output and "re-run the same command to resume" in stopped.output
    assert "Traceback" not in stopped.output
    assert set(scan(out / "records").units) == {(ids[0], "eval"), (ids[0], "flow")}
    assert read_records(out)["error"].isna().all()  # not recorded as the sample's failure
    manifest = json.loads((out / "manifest.json").read_text())
    assert "out of memory" in manifest["stopped"]["reason"]
    assert manifest["samples"]["done"] == 1 and manifest["samples"]["missing"] == len(ids) - 1

    monkeypatch.setattr(InformationFlow, "records", records)
    resumed = invoke(cli_args(tiny_llava_path, out))
    assert resumed.exit_code == 0, resumed.output
    assert f"done: {len(ids) - 1} samples, 0 failed, 1 already done" in resumed.output
    check_complete(out, ids)


def test_a_sample_stopped_between_its_units_is_not_done_and_the_total_is_kept(
    tiny_llava_path, tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C lands after a sample's ``eval`` unit is written and before its ``flow`` unit:
    the manifest counts it as not done (1 done of 4, 3 missing), the total is known though
    the run never closed, and ``vlmflow merge`` and the report say "of 4" and what is left;
    a folder from before the total was written falls back on its data provenance."""
    from typer.testing import CliRunner

    from vlmflow.cli import app

    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    write_unit = RecordStore.write_unit

    def interrupted(self, sample_id, analysis, rows, **kw):
        write_unit(self, sample_id, analysis, rows, **kw)
        if (sample_id, analysis) == (ids[1], "eval"):
            raise KeyboardInterrupt

    monkeypatch.setattr(RecordStore, "write_unit", interrupted)
    out = tmp_path / "run"
    result = invoke(cli_args(tiny_llava_path, out))
    assert result.exit_code != 0
    assert (ids[1], "eval") in scan(out / "records").units
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stopped"]["reason"] == "interrupted (SIGINT)"
    assert manifest["num_samples"] == len(ids)
    counts = manifest["samples"]
    assert (counts["total"], counts["done"], counts["failed"], counts["missing"]) == (4, 1, 0, 3)

    merged = CliRunner().invoke(app, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert "samples: 1 done, 0 failed, 3 not yet analysed" in merged.output
    assert "1 done, 0 failed, 3 missing of 4" in (out / "report.html").read_text()

    del manifest["num_samples"]  # a folder written before the total was kept at open
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert RunDir(out).merge()["samples"]["missing"] == 3

    monkeypatch.setattr(RecordStore, "write_unit", write_unit)
    resumed = invoke(cli_args(tiny_llava_path, out))
    assert resumed.exit_code == 0, resumed.output
    check_complete(out, ids)
    counts = json.loads((out / "manifest.json").read_text())["samples"]
    assert (counts["done"], counts["missing"]) == (4, 0)


def test_an_analysis_that_fails_fails_its_own_unit_and_keeps_the_others(
    tiny_llava_path, tmp_path: Path, monkeypatch
) -> None:
    """An analysis that raises on one sample used to fail every unit of that sample, the
    answer it had computed included; now only its own unit fails, the rest is kept, the
    sample counts as failed, and a resume retries that unit alone."""
    import vlmflow
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.analyses.information_flow import InformationFlow

    out = tmp_path / "run"
    options = vlmflow.Options(
        model=str(tiny_llava_path),
        data="synthetic:2:fixed",
        tasks=("moving_direction",),
        num_frames=8,
        progress=False,
    )
    bad = load_dataset("synthetic:2:fixed", tasks=["moving_direction"])[1].id
    real = InformationFlow.records
    calls: list[str] = []

    def flaky(self, probe):
        calls.append(probe.sample.id)
        if probe.sample.id == bad:
            raise ValueError("flow broke here")
        return real(self, probe)

    monkeypatch.setattr(InformationFlow, "records", flaky)
    analyses = [
        AnswerProbability(sample_mode="all"),
        InformationFlow(targets=("cross-frame",), window=3, layers=(1, 2), sample_mode="all"),
    ]
    result = vlmflow.run(options, analyses, out)
    assert result.summary.done == 1 and result.summary.failed == {bad: "flow: ValueError: flow broke here"}
    records = read_records(out)
    mine = records[records["sample_id"] == bad]
    assert set(mine["analysis"]) == {"eval", "answer-prob", "flow"}
    assert mine[mine["analysis"] != "flow"]["error"].isna().all()  # the answer and answer-prob kept
    assert (mine[mine["analysis"] == "flow"]["error"] == "ValueError: flow broke here").all()
    assert RunDir(out).sample_counts(2)["failed"] == 1
    monkeypatch.setattr(InformationFlow, "records", real)
    attempts = {u: a for u, (a, _) in scan(out / "records").units.items() if u[0] == bad}
    again = vlmflow.run(options, analyses, out)
    assert again.summary.retried == 1 and again.summary.done == 1 and not again.summary.failed
    records = read_records(out)
    mine = records[records["sample_id"] == bad]
    assert mine["error"].isna().all() and len(mine[mine["analysis"] == "flow"]) == 2
    now = {u: a for u, (a, _) in scan(out / "records").units.items() if u[0] == bad}
    # only the failed unit was computed again: the answer and answer-prob are the same attempts
    assert {u: a for u, a in now.items() if u[1] != "flow"} == {
        u: a for u, a in attempts.items() if u[1] != "flow"
    }
    assert now[(bad, "flow")] != attempts[(bad, "flow")]


def test_a_warning_made_an_error_fails_no_sample_of_a_run(tiny_llava, tmp_path, monkeypatch) -> None:
    """``python -W error``: a video with fewer frames than the run decodes warns that frames
    repeat while the sample is prepared, and that warning, raised as an exception, failed
    the whole sample (every unit stored as 'UserWarning: video ... repeats frames'). Now
    the sample is analysed and stored and the warning said after it."""
    import dataclasses
    import warnings

    import numpy as np

    from tests.fixtures.tiny import make_sample
    from vlmflow.data import write_video
    from vlmflow.run import run_samples

    clip = write_video(tmp_path / "short.mp4", np.zeros((2, 32, 32, 3), np.uint8), fps=2)
    short = dataclasses.replace(make_sample(sid="short"), frames=None, video=str(clip))
    said: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: said.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = run_samples(tiny_llava, [short], [], tmp_path / "run", progress=False)
    assert summary.failed == {} and summary.done == 1
    records = RunDir(tmp_path / "run").records()
    assert records["error"].isna().all() and records["num_frames"].tolist() == [tiny_llava.num_frames]
    assert [m for m in said if "repeats frames" in m], said
