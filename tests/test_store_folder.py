"""Run folders after the events a reliability review tried (docs/reliability.md): a Ctrl-C
while a run opens its folder, a damaged manifest, record shards that overlap, the counts a
resume prints when it keeps failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlmflow
import vlmflow.provenance
from vlmflow.rundir import RunDir
from vlmflow.store import scan


def _options(model: Path, data: str = "synthetic:1:fixed", **kw) -> vlmflow.Options:
    return vlmflow.Options(model=str(model), data=data, tasks=("object_count",), progress=False, **kw)


def _answer_prob() -> list:
    return [vlmflow.AnswerProbability(sample_mode="all")]


@pytest.mark.parametrize("resume", [False, True], ids=["new-folder", "resumed-folder"])
def test_ctrl_c_while_the_folder_is_opened_leaves_it_resumable(
    tiny_llava_path: Path, tmp_path: Path, monkeypatch, resume: bool
) -> None:
    """Ctrl-C after the run lock is taken and before the folder holds the run's
    configuration (here: while the weights are fingerprinted). The folder used to get a
    manifest of only ``stopped`` and ``samples``, and the same command was then refused as
    "another configuration". Now the folder is left as it was found: the same command runs."""
    out = tmp_path / "run"
    if resume:
        vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    before = (out / "manifest.json").read_bytes() if resume else None

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(vlmflow.provenance, "model_fingerprint", interrupted)
        with pytest.raises(KeyboardInterrupt):
            vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    if resume:
        assert (out / "manifest.json").read_bytes() == before
    else:
        assert not (out / "manifest.json").exists()
    result = vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    assert result.summary.done + result.summary.skipped == 1
    assert RunDir(out).counts()["done"] == 1


def test_a_stop_is_not_recorded_in_a_manifest_without_a_configuration(tmp_path: Path) -> None:
    """``record_stop`` on a folder that holds no run configuration writes nothing (counts
    alone would make the folder refuse the run's own resume)."""
    run = RunDir(tmp_path / "run")
    (run.path / "records").mkdir(parents=True)
    assert run.record_stop("interrupted (SIGINT)", 2) is False
    assert not run.manifest_path.exists()
    run.write_manifest({"config": {"model": "m"}})
    assert run.record_stop("interrupted (SIGINT)", 2) is True
    assert json.loads(run.manifest_path.read_text())["stopped"]["reason"] == "interrupted (SIGINT)"
    assert scan(run.records_dir).units == {}


def test_a_shard_copied_over_another_reads_once_and_merge_says_so(
    tiny_llava_path: Path, tmp_path: Path, caplog
) -> None:
    """A finished run's shard copied to a second shard name (overlapping shards): every
    marker used to fail (rows were counted per attempt across shards, so each copy doubled
    them), ``vlmflow merge`` said 0 done and left the old records.parquet, and a resume
    computed everything again. Now each attempt is checked within its own shard, the copy is
    read once, merge counts what the run did and warns, and a resume computes nothing."""
    import pandas as pd

    out = tmp_path / "run"
    opts = _options(tiny_llava_path, "synthetic:2")
    vlmflow.run(opts, _answer_prob(), out)
    records = RunDir(out).records()
    parquet = pd.read_parquet(out / "records.parquet")
    for suffix in (".jsonl", ".done.jsonl"):
        src = out / "records" / f"shard-00000{suffix}"
        (out / "records" / f"shard-00001{suffix}").write_bytes(src.read_bytes())
    found = scan(out / "records")
    assert len(found.units) == 4 and found.invalid_markers == 0 and found.duplicates == 4
    assert RunDir(out).records().equals(records)
    with caplog.at_level("WARNING"):
        merged = vlmflow.merge(out)
    assert merged["samples"]["done"] == 2
    assert "4 unit(s) found whole in more than one shard" in caplog.text
    assert pd.read_parquet(out / "records.parquet").equals(parquet)
    again = vlmflow.run(opts, _answer_prob(), out)
    assert (again.summary.done, again.summary.skipped) == (0, 2)


def test_markers_whose_rows_do_not_match_are_named_on_merge_and_resume(
    tiny_llava_path: Path, tmp_path: Path, caplog
) -> None:
    """A unit's rows damaged after its marker was written: the unit is recomputed as
    before, and merge and the resume now say how many markers did not match (it was silent)."""
    out = tmp_path / "run"
    vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    rows = out / "records" / "shard-00000.jsonl"
    lines = rows.read_bytes().splitlines(keepends=True)
    rows.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # the last unit's last row torn
    with caplog.at_level("WARNING"):
        merged = vlmflow.merge(out)
    assert merged["samples"]["done"] == 0
    assert "1 done marker(s) whose rows are missing or do not match" in caplog.text
    assert "1 unreadable line(s)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    assert again.summary.done == 1
    assert "1 done marker(s) whose rows are missing or do not match" in caplog.text


def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])  # cut short, as a copy that stopped part-way


@pytest.mark.parametrize("how", ["merge", "same-command", "report", "moved-aside"])
def test_a_damaged_manifest_is_named_and_rebuilt_without_recomputing(
    tiny_llava_path: Path, tmp_path: Path, how: str
) -> None:
    """A damaged manifest.json made run, merge and report fail with "JSONDecodeError ...
    this is unexpected", naming no file, and merge could not rebuild it. Now reading it says
    which file and what to do, and the advice works: ``vlmflow merge`` rebuilds it (from the
    copy of the configuration the records keep, records/run.json), and so do re-running the
    same command, which then computes nothing again, and ``vlmflow report``; so does a
    manifest moved aside."""
    from tests.test_store_reliability import invoke
    from vlmflow.errors import RunError

    out = tmp_path / "run"
    opts = _options(tiny_llava_path, "synthetic:2")
    vlmflow.run(opts, _answer_prob(), out)
    markers = (out / "records" / "shard-00000.done.jsonl").read_bytes()
    records = RunDir(out).records()
    config = RunDir(out).manifest()["config"]
    if how == "moved-aside":
        (out / "manifest.json").rename(tmp_path / "manifest.json.old")
    else:
        _damage(out / "manifest.json")
        with pytest.raises(RunError) as unread:
            RunDir(out).manifest()
        said = " ".join(str(unread.value).split())
        assert f"{out / 'manifest.json'} cannot be read" in said and f"vlmflow merge {out}" in said
    if how in ("merge", "report"):
        done = invoke([how, str(out)])
        assert done.exit_code == 0, done.output
        assert (out / "manifest.json.damaged").exists()
    else:
        again = vlmflow.run(opts, _answer_prob(), out)
        assert (again.summary.done, again.summary.skipped) == (0, 2)
    manifest = RunDir(out).manifest()
    assert manifest["config"] == config and manifest["samples"]["done"] == 2
    assert (out / "records" / "shard-00000.done.jsonl").read_bytes() == markers  # nothing recomputed
    assert RunDir(out).records().equals(records)
    assert invoke(["report", str(out)]).exit_code == 0


def test_a_damaged_manifest_without_a_copy_says_it_cannot_be_rebuilt(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """A folder from before records/run.json: its configuration was only in the manifest, so
    the error says so and what to do instead (not "unexpected", and not "re-run")."""
    from vlmflow.errors import RunError

    out = tmp_path / "run"
    vlmflow.run(_options(tiny_llava_path), _answer_prob(), out)
    (out / "records" / "run.json").unlink()
    _damage(out / "manifest.json")
    for attempt in (
        lambda: vlmflow.run(_options(tiny_llava_path), _answer_prob(), out),
        lambda: vlmflow.merge(out),
    ):
        with pytest.raises(RunError, match="cannot be read") as refused:
            attempt()
        assert "cannot be rebuilt from the records: put back a copy of it" in str(refused.value)


def test_shards_of_another_run_copied_in_are_named_and_do_not_replace_the_runs_own(
    tiny_llava_path: Path, tmp_path: Path, caplog
) -> None:
    """Shards of another run of the same samples (another prompt) copied into a run folder
    under a new shard number: the same units, finished with other attempts. They used to be
    read silently, the last shard by name winning (merge said ``shard-00000: 0 units``, and
    the summaries held the other run's results). Now merge, the report and a resume warn,
    naming the shards; the first shard by name (the run's own) is read, and each shard's
    count says what it holds."""
    import pandas as pd

    from vlmflow.report import finalize
    from vlmflow.store import _WARNED

    out, other = tmp_path / "run", tmp_path / "other"
    opts = _options(tiny_llava_path, "synthetic:2")
    vlmflow.run(opts, _answer_prob(), out)
    vlmflow.run(_options(tiny_llava_path, "synthetic:2", prompt="chat"), _answer_prob(), other)
    records, parquet = RunDir(out).records(), pd.read_parquet(out / "records.parquet")
    assert not records.equals(RunDir(other).records())  # another prompt: other results
    for suffix in (".jsonl", ".done.jsonl"):
        src = other / "records" / f"shard-00000{suffix}"
        (out / "records" / f"shard-00001{suffix}").write_bytes(src.read_bytes())
    found = scan(out / "records")
    assert len(found.units) == 4 and found.duplicates == 0
    assert found.conflicts == {u: ["shard-00000", "shard-00001"] for u in found.units}
    warning = "4 unit(s) finished with different results in more than one shard (shard-00000, shard-00001"
    assert warning in found.damage()
    assert RunDir(out).records().equals(records)  # the run's own shard is read
    with caplog.at_level("WARNING"):
        merged = vlmflow.merge(out)
    assert merged["shards"] == {"shard-00000": 4, "shard-00001": 4}
    assert merged["samples"]["done"] == 2
    assert warning in caplog.text
    assert pd.read_parquet(out / "records.parquet").equals(parquet)  # the run's own results
    for say in ("report", "resume"):
        _WARNED.clear()
        caplog.clear()
        with caplog.at_level("WARNING"):
            if say == "report":
                finalize(RunDir(out))
            else:
                again = vlmflow.run(opts, _answer_prob(), out)
                assert (again.summary.done, again.summary.skipped) == (0, 2)
        assert warning in caplog.text, say


def test_a_stopped_session_stays_in_the_manifest_and_the_report_says_every_process_count(
    tiny_llava_path: Path, tmp_path: Path, monkeypatch
) -> None:
    """A session that stopped (out of memory here) keeps its entry in the manifest's
    ``sessions`` (its reason, its process count, the counts at the stop) after a resume ends
    normally; it used to write none, and the resume dropped ``stopped``, so the stopped
    session vanished. The report's Overview lists every session's process count."""
    import torch

    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.errors import RunStopped
    from vlmflow.report import finalize

    records, calls = AnswerProbability.records, []

    def short_of_memory(self, probe):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return records(self, probe)

    out = tmp_path / "run"
    opts = _options(tiny_llava_path, "synthetic:2")
    monkeypatch.setattr(AnswerProbability, "records", short_of_memory)
    with pytest.raises(RunStopped, match="out of memory"):
        vlmflow.run(opts, _answer_prob(), out)
    monkeypatch.setattr(AnswerProbability, "records", records)
    stopped = json.loads((out / "manifest.json").read_text())["sessions"]
    assert len(stopped) == 1 and "out of memory" in stopped[0]["stopped"]
    assert stopped[0]["world_size"] == 1 and stopped[0]["samples"] == {"done": 1, "failed": 0, "missing": 1}

    vlmflow.run(opts, _answer_prob(), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest  # the run is no longer stopped ...
    sessions = manifest["sessions"]
    assert len(sessions) == 2 and sessions[0] == stopped[0]  # ... but its stopped session is kept
    assert "stopped" not in sessions[1] and sessions[1]["done"] == 1

    # a first session on 2 processes, resumed on 1
    manifest["sessions"][0]["world_size"] = 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    finalize(RunDir(out))
    html = (out / "report.html").read_text()
    assert "<b>processes</b><span>2, then 1</span>" in html


def test_a_row_shard_whose_done_marker_file_is_lost_is_named_on_merge(
    tiny_llava_path: Path, tmp_path: Path, caplog
) -> None:
    """A row shard whose ``.done.jsonl`` is lost: its units are not done (as before), and
    merge now says which shard holds rows without markers (it was silent). The eval rows a
    frame-policy check reads are kept alone when asked (``scan(only=...)``)."""
    out = tmp_path / "run"
    vlmflow.run(_options(tiny_llava_path, "synthetic:2"), _answer_prob(), out)
    found = scan(out / "records", keep_rows=True, only=("eval",))
    assert found.units == scan(out / "records").units and len(found.units) == 4
    assert {r["analysis"] for rows in found.rows.values() for r in rows} == {"eval"}
    assert len(found.rows) == 4 and sum(map(len, found.rows.values())) == 2  # 2 units hold the rows
    rows = len((out / "records" / "shard-00000.jsonl").read_bytes().splitlines())
    (out / "records" / "shard-00000.done.jsonl").unlink()
    with caplog.at_level("WARNING"):
        merged = vlmflow.merge(out)
    assert merged["samples"]["done"] == 0
    assert f"1 row shard(s) without their done-marker file: shard-00000.jsonl ({rows} rows)" in caplog.text


def test_a_folder_of_another_analysis_version_is_refused_naming_what_changed(tmp_path: Path) -> None:
    """A run folder records the version of each analysis its records were computed by
    (``computed_in.analysis_versions``); one without it counts as version 1. Opening it with
    another version is refused in one line naming the analysis, both versions and each
    change in between; the same version opens and records it."""
    from vlmflow.analyses.base import Analysis
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.errors import RunError

    class Counted(Analysis):
        name = "counted"
        version = 3
        changes = {2: "ties rank last", 3: "float64"}

        def config(self) -> dict:
            return {}

    run = RunDir(tmp_path / "run")
    config = {"model": "m", "analyses": {"counted": {}, "logit-lens": LogitLens().config()}}
    run.open(config, {}, [Counted(), LogitLens()])
    assert run.manifest()["computed_in"]["analysis_versions"] == {"counted": 3, "logit-lens": 2}
    run.open(config, {}, [Counted(), LogitLens()])  # the same versions: resumed
    manifest = run.manifest()
    del manifest["computed_in"]["analysis_versions"]  # a folder from before versions were recorded
    with pytest.raises(RunError) as refused:
        run.refuse_other_versions([Counted()], manifest)
    assert (
        "holds counted records computed by version 1 of that analysis (the folder records no version"
        in str(refused.value)
    )
    assert "computes version 3 (changed in version 2: ties rank last; 3: float64)" in str(refused.value)
    with pytest.raises(
        RunError, match=r"logit-lens records computed by version 1 .*word-initial first sub-token"
    ):
        run.refuse_other_versions([LogitLens()], manifest)
    manifest["computed_in"]["analysis_versions"] = {"counted": 4}  # started by a newer vlmflow
    with pytest.raises(
        RunError, match=r"version 4 of that analysis, but this vlmflow computes version 3 \(the"
    ):
        run.refuse_other_versions([Counted()], manifest)


def test_a_rank_killed_in_its_first_unit_leaves_no_false_alarm_after_the_resume(
    tiny_llava_path: Path, tmp_path: Path, caplog
) -> None:
    """A shard's done-marker file is created (empty) when the shard is taken, so a rank
    killed during its first unit leaves rows *and* a marker file; and rows left without
    one (a shard written before) whose unit the resume finished are not called damage."""
    out = tmp_path / "run"
    taken = RunDir(tmp_path / "other").store(3).acquire()
    try:
        assert taken.done_path.exists() and taken.done_path.read_bytes() == b""
    finally:
        taken.close()
    vlmflow.run(_options(tiny_llava_path, "synthetic:2"), _answer_prob(), out)
    line = (out / "records" / "shard-00000.jsonl").read_bytes().splitlines()[0]
    row = json.loads(line)
    row["_attempt"] = "killed-in-its-first-unit"
    (out / "records" / "shard-00001.jsonl").write_text(json.dumps(row) + "\n")
    with caplog.at_level("WARNING"):
        merged = vlmflow.merge(out)
        vlmflow.run(_options(tiny_llava_path, "synthetic:2"), _answer_prob(), out)
    assert merged["samples"]["done"] == 2
    assert "without their done-marker file" not in caplog.text


def test_ctrl_c_while_the_report_is_written_records_one_finished_session(
    tiny_llava_path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Ctrl-C after every unit finished and the session was recorded, while the report is
    written: the run is not stopped (no ``stopped``, every sample done) and the session has
    one entry, whose ``report`` says the report was not written and how to write it. It used
    to get a second entry, as stopped, and ``stopped`` with every sample done."""
    import vlmflow.report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(vlmflow.report, "finalize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vlmflow.run(_options(tiny_llava_path, "synthetic:2"), _answer_prob(), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest and manifest["samples"]["done"] == 2
    [session] = manifest["sessions"]
    assert session["done"] == 2 and "finished_at" in session and "stopped" not in session
    assert session["report"] == f"not written (interrupted (SIGINT)): `vlmflow report {out}` writes it"
    err = capsys.readouterr().err
    assert f"run `vlmflow report {out}` to write the report" in err and "resume" not in err

    monkeypatch.undo()
    vlmflow.run(_options(tiny_llava_path, "synthetic:2"), _answer_prob(), out)  # nothing left to do
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest and [("report" in s) for s in manifest["sessions"]] == [True, False]
    assert (out / "report.html").exists()
