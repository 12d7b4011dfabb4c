"""The report: summaries, PNG figures and one self-contained interactive HTML file, with
a section per analysis (built-in, contributed or generic); checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.report import Section, finalize, report_section, summarize_layers, write_parquet
from vlmflow.store import RecordStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def fake_run(root: Path) -> Path:
    """A run folder with hand-written records: eval (one failed sample), flow, an analysis
    with layers that no section knows ('mystery') and one whose section raises ('broken')."""
    rng = np.random.default_rng(0)
    store = RecordStore(root)
    (root / "manifest.json").write_text(json.dumps({"config": {"model": "fake", "data": "fake:1"}}))
    for i in range(6):
        sid, task = f"s{i}", ("left_right", "counting")[i % 2]
        common = {"task": task, "model": "fake", "error": None}
        if i == 5:
            for name in ("eval", "flow"):
                store.write_unit(sid, name, [{**common, "error": "DataError: missing.mp4 cannot be read"}])
            continue
        store.write_unit(sid, "eval", [{**common, "correct": bool(i % 3), "p_pred": 0.6}])
        flow, mystery, broken = [], [], []
        for layer in range(6):
            for cond in ("video->last", "question->last"):
                rel = float(rng.normal(-10 * (cond == "video->last") * (layer < 3), 3))
                flow.append(
                    {
                        **common,
                        "target": "vql-to-ql",
                        "condition": cond,
                        "layer": layer,
                        "window": 3,
                        "rel_pred": rel,
                        "rel_gt": rel,
                        "correct_new": bool(rng.random() > 0.3),
                        "p_pred_base": 0.6,
                        "p_pred_new": 0.6 * (1 + rel / 100),
                        "hits": {},  # an empty dict has no Parquet type: stored as JSON text
                    }
                )
            for kind in ("alpha", "beta"):
                mystery.append({**common, "layer": layer, "kind": kind, "score": float(rng.random())})
            broken.append({**common, "layer": layer, "value": 1.0})
        store.write_unit(sid, "flow", flow)
        store.write_unit(sid, "mystery", mystery)
        store.write_unit(sid, "broken", broken)
    return root


@report_section("broken", "a section that raises (tests the fallback)")
def _broken_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    raise KeyError("no such column")


def test_finalize_writes_summaries_figures_and_a_self_contained_report(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    result = finalize(run)
    assert [s.key for s in result["sections"]] == ["flow", "broken", "mystery"]
    assert (run / "records.parquet").exists() and len(pd.read_parquet(run / "records.parquet")) == result[
        "records"
    ]
    for name in ("accuracy", "flow", "mystery", "broken"):
        assert (run / "summary" / f"{name}.csv").exists(), name
    assert (run / "figures" / "flow-vql-to-ql.png").stat().st_size > 5000

    mystery = pd.read_csv(run / "summary" / "mystery.csv")  # the generic per-layer summary
    assert {"task", "kind", "layer", "n", "score_mean", "score_ci95_lo", "score_ci95_hi"} <= set(
        mystery.columns
    )
    assert len(mystery) == 2 * 2 * 6 and set(mystery["n"]) == {2, 3}
    broken = next(s for s in result["sections"] if s.key == "broken")
    assert "failed (KeyError" in broken.notes and broken.charts  # generic view instead

    page = (run / "report.html").read_text()
    # self-contained: nothing is fetched (the SVG namespace URI is an identifier, not a fetch)
    assert not re.search(r"<script[^>]+src=|<link\b|url\(|@import", page)
    assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", page)
    charts = json.loads(re.search(r"id='chart-data'>(.*?)</script>", page, re.S).group(1))
    assert [c["title"] for c in charts] == ["Knockout: vql-to-ql", "broken", "mystery"]
    assert charts[0]["series"] == ["question->last", "video->last"]
    assert {p["name"] for p in charts[0]["panels"]} == {"counting (n=2)", "left_right (n=3)"}
    assert "missing.mp4 cannot be read" in page and "Failed samples" in page
    assert "Re-running the same command retries them" in page and "--no-retry-failed to keep" in page
    assert "skips them" not in page  # failed samples are retried by default

    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0


def test_generic_summary_finds_the_condition_columns() -> None:
    rows = pd.DataFrame(
        {
            "sample_id": ["a"] * 4 + ["b"] * 4,
            "task": "t",
            "analysis": "x",
            "layer": [0, 0, 1, 1] * 2,
            "cut": ["p", "q"] * 4,
            "pred": ["A", "B", "A", "A", "C", "A", "B", "B"],  # varies, but is not a condition
            "p": np.linspace(0, 1, 8),
            "ok": [True, False] * 4,
        }
    )
    out = summarize_layers(rows)
    assert list(out.columns[:4]) == ["task", "cut", "layer", "n"]
    assert len(out) == 4 and set(out["n"]) == {2}
    assert {"p_mean", "p_ci95_lo", "p_ci95_hi", "ok_mean"} <= set(out.columns)


def test_parquet_stores_columns_arrow_cannot_type(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2], "hits": [{}, {}], "mixed": [1, "x"], "lst": [[1], [2, 3]]})
    write_parquet(df, tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back["hits"]) == ["{}", "{}"] and list(back["mixed"]) == ["1", "x"]


@pytest.fixture(scope="module")
def full_run(tiny_llava, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every built-in analysis on the tiny model (2 samples), through ``api.run``."""
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.analyses.attention_maps import AttentionMaps
    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.analyses.pathways import PRESETS, Pathways
    from vlmflow.api import Options, run
    from vlmflow.probe import Model

    out = tmp_path_factory.mktemp("full") / "run"
    analyses = [
        InformationFlow(targets=("cross-frame", "vql-to-ql"), window=3, sample_mode="all"),
        AnswerProbability(sample_mode="all"),
        LogitLens(sample_mode="all", overlays=0),
        AttentionMaps(sample_mode="all", overlays=0),
        Pathways(spec=PRESETS["llava-next-7b-video-ft"], seeds=(0, 1)),
    ]
    opts = Options(
        model="tiny", data="synthetic:1", tasks=("moving_direction", "object_count"), progress=False
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(opts, analyses, out, model=Model(tiny_llava))
    finally:
        torch.set_num_threads(threads)
    assert result.summary.done == 2, result.summary
    return out


def test_every_builtin_analysis_has_its_section(full_run: Path) -> None:
    result = finalize(full_run)
    assert [s.key for s in result["sections"]] == [
        "flow",
        "answer-prob",
        "logit-lens",
        "attention",
        "pathways",
    ]
    for name in ("flow", "answer-prob", "logit-lens", "attention", "pathways"):
        assert (full_run / "summary" / f"{name}.csv").exists(), name
    for png in ("flow-cross-frame.png", "answer-prob.png", "logit-lens.png", "attention-frames-last.png"):
        assert (full_run / "figures" / png).stat().st_size > 5000, png
    page = (full_run / "report.html").read_text()
    for title in ("Answer probability by layer", "Logit lens on video tokens", "Effective pathways"):
        assert title in page


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    """Open the report offline: the script draws every chart without console errors,
    hovering shows values and a legend click hides a curve (the page's #selftest hook);
    and a screenshot is taken (set VLMFLOW_SCREENSHOT_DIR to keep it)."""
    import os

    report = full_run / "report.html"
    url = report.resolve().as_uri()
    dom = chromium(
        "--enable-logging=stderr", "--v=0", "--dump-dom", f"{url}#selftest", profile=tmp_path / "p1"
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERROR:CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    errors = re.search(r'<div id="js-errors"[^>]*>(.*?)</div>', dom.stdout, re.S)
    assert errors is not None and errors.group(1).strip() == ""
    rendered = int(re.search(r'data-charts-rendered="(\d+)"', dom.stdout).group(1))
    assert rendered >= 7  # flow x2 targets + tasks compared, answer-prob x2, lens, attention x2
    assert dom.stdout.count('class="curve"') >= 20 and 'class="band"' in dom.stdout
    test = json.loads(re.search(r'<pre id="selftest"[^>]*>(.*?)</pre>', dom.stdout, re.S).group(1))
    assert test["panels"] >= 14
    # values with their CI's bounds on hover
    assert "layer" in test["tooltip"] and re.search(r"\[-?[\d.]+, -?[\d.]+\]", test["tooltip"])
    assert test["curvesAfterToggle"] == test["curvesBefore"] - 2  # one curve hidden in both panels
    assert test["curvesRestored"] == test["curvesBefore"]

    shot = tmp_path / "report.png"
    taken = chromium(
        "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url, profile=tmp_path / "p2"
    )
    assert taken.returncode == 0 and shot.stat().st_size > 50_000, taken.stderr[-2000:]
    if os.environ.get("VLMFLOW_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["VLMFLOW_SCREENSHOT_DIR"]) / "report.png")


def test_report_refuses_a_folder_a_run_is_writing(tmp_path: Path) -> None:
    """``vlmflow report`` takes the run folder's lock, like ``merge``: while a run holds it,
    the report is refused (naming the holder) and writes nothing."""
    from vlmflow.lock import run_lock

    run = fake_run(tmp_path / "run")
    with run_lock(run):  # a run still writing this folder
        busy = CliRunner().invoke(app, ["report", str(run)])
    assert busy.exit_code == 2 and "is in use by another vlmflow process" in busy.output
    assert not (run / "report.html").exists() and not (run / "records.parquet").exists()
    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0
    assert (run / "report.html").exists()


def test_finalize_from_python_refuses_a_folder_a_run_is_writing(tmp_path: Path) -> None:
    """``vlmflow.report.finalize`` took no lock (only the CLI's ``report`` did), so from a
    notebook it rewrote the report of a folder a run was still writing; now it is refused
    with the CLI's message and writes nothing, and a free folder is reported as before."""
    from vlmflow.errors import RunError
    from vlmflow.lock import run_lock

    run = fake_run(tmp_path / "run")
    with run_lock(run), pytest.raises(RunError, match="is in use by another vlmflow process"):
        finalize(run)
    assert not (run / "report.html").exists() and not (run / "records.parquet").exists()
    assert finalize(run)["records"] > 0 and (run / "report.html").exists()
    with pytest.raises(RunError, match="does not exist"):
        finalize(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()  # the lock did not create it


def _torn(write, suffix: str, at: int = 1):
    """``write`` that, when its ``at``-th argument (the file) ends in ``suffix``, leaves half
    the file's bytes and then meets a full disk."""
    import errno

    def torn(*args, **kwargs):
        out = write(*args, **kwargs)
        target = Path(args[at])
        if target.name.endswith(suffix):
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return out

    return torn


@pytest.mark.parametrize("what", ["records.parquet", "accuracy.csv", "report.html", "figure"])
def test_a_failed_report_write_keeps_the_previous_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Every file the report writes is replaced all at once: a write that fails part-way
    (here a full disk after half the bytes) leaves the previous file as it was, and no
    temporary file behind."""
    import matplotlib.figure

    from vlmflow.store import StoreError

    run = fake_run(tmp_path / "run")
    first = finalize(run)
    figure = next(iter(first["figures"].values()))
    target = {
        "records.parquet": run / "records.parquet",
        "accuracy.csv": run / "summary" / "accuracy.csv",
        "report.html": run / "report.html",
        "figure": figure,
    }[what]
    before = target.read_bytes()
    RecordStore(run, 1).write_unit("s9", "eval", [{"task": "counting", "error": None, "correct": True}])
    if what == "records.parquet":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", _torn(pd.DataFrame.to_parquet, ".parquet"))
    elif what == "accuracy.csv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", _torn(pd.DataFrame.to_csv, ".csv"))
    elif what == "report.html":
        monkeypatch.setattr(Path, "write_text", _torn(Path.write_text, ".html", at=0))
    else:
        savefig = matplotlib.figure.Figure.savefig
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _torn(savefig, figure.suffix))
    # a figure too: a full disk is the disk's fault, not a broken section (it used to be
    # shown as the section's failure while the report went on)
    with pytest.raises(StoreError, match="No space left"):
        finalize(run)
    assert target.read_bytes() == before
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


def test_a_full_disk_while_a_figure_is_written_stops_the_report_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vlmflow report`` meeting a full disk in a section's figure exits 2 with the one-line
    ``StoreError`` (docs/reliability.md), as for any other report file; the previous report
    files stay whole. It used to exit 0 with a traceback warning and a report whose section
    said "failed (StoreError: ...); generic view shown"."""
    import errno

    import matplotlib.figure

    run = fake_run(tmp_path / "run")
    finalize(run)
    kept = {p: p.read_bytes() for p in [run / "report.html", *run.glob("figures/**/*.png")]}
    assert len(kept) > 1

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), result.output
    assert "No space left on device" in lines[0] and ".png" in lines[0], result.output
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in kept} == kept
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


def test_a_name_the_file_system_refuses_is_no_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure whose file name the file system refuses (``ENAMETOOLONG``) stopped the whole
    report with "File name too long; ... fix the disk, then re-run". Only the folder or its
    disk refusing writes (full, read-only, no permission, I/O error) stops the report; this
    is the section's failure, shown in its place while the rest of the report is written."""
    import errno

    import matplotlib.figure

    from vlmflow.store import store_error

    run = fake_run(tmp_path / "run")

    def too_long(self, *args, **kwargs):
        raise OSError(errno.ENAMETOOLONG, "File name too long", str(args[0]))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", too_long)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "fix the disk" not in result.output
    page = (run / "report.html").read_text()
    assert "The &#x27;flow&#x27; section failed (OSError" in page and "File name too long" in page

    said = {
        code: str(store_error(run / "x.png", OSError(code, "strerror")))
        for code in (errno.ENAMETOOLONG, errno.ENOSPC, errno.EIO)
    }
    assert "fix the disk" not in said[errno.ENAMETOOLONG] and "free some space" in said[errno.ENOSPC]
    assert "fix the disk" in said[errno.EIO]


def test_the_accuracy_bars_count_the_samples_they_are_over() -> None:
    """A task's accuracy is over its answered samples: the bar says how many, and the
    unanswered ones apart (it read "0.25 (n=9)" for 1 of 4 answered with 5 unanswered)."""
    from vlmflow.report.html import _accuracy_bars

    acc = pd.DataFrame(
        {"task": ["counting", "left_right"], "n": [9, 3], "unanswered": [5, 0], "accuracy": [0.25, 1.0]}
    )
    svg = _accuracy_bars(acc)
    assert "0.25 (n=4, 5 unanswered)</text>" in svg and "1.00 (n=3)</text>" in svg


def test_the_terminal_and_the_accuracy_table_mean_one_thing_by_failed(tmp_path, capsys) -> None:
    """A sample whose answer was read but whose flow unit failed: the terminal said
    "done: 1 samples, 1 failed" (a sample with any failed unit, as the report's Failed
    samples and its samples line count) and the accuracy table under it "failed 0" (samples
    without an answer). The table's column now says what it counts: ``unanswered``."""
    from types import SimpleNamespace

    from vlmflow.commands.common import print_result
    from vlmflow.run import RunSummary

    store = RecordStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"model": "fake", "data": "fake:1"}}))
    for sid in ("one", "two"):
        store.write_unit(sid, "eval", [{"task": "dir", "error": None, "correct": sid == "two"}])
    store.write_unit("one", "flow", [{"task": "dir", "error": "needs at least 2 options"}])
    store.write_unit("two", "flow", [{"task": "dir", "error": None, "layer": 0, "rel_pred": 1.0}])
    result = finalize(tmp_path)
    summary = RunSummary(done=1, failed={"one": "flow: needs at least 2 options"})
    print_result(SimpleNamespace(summary=summary, report=result, out=tmp_path, rank=0))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("done: 1 samples, 1 failed") and result["samples"]["failed"] == 1
    header, row = lines[1].split(), lines[2].split()
    assert "failed" not in header and dict(zip(header, row, strict=True))["unanswered"] == "0", lines
    csv = pd.read_csv(tmp_path / "summary" / "accuracy.csv")
    assert list(csv.columns[:4]) == ["task", "n", "unanswered", "accuracy"]
    assert "0.50 (n=2)</text>" in (tmp_path / "report.html").read_text()


def test_the_report_counts_samples_from_the_records_not_a_stale_manifest(tiny_llava_path, tmp_path) -> None:
    """After Ctrl-C then a killed resume the manifest said "8 done ... 22 missing of 30"
    while the records held 13 finished samples; the report showed the manifest's counts."""
    import vlmflow

    options = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:3:fixed", tasks=("moving_direction",), progress=False
    )
    run = tmp_path / "run"
    vlmflow.run(options, [], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["samples"] = {"total": 3, "done": 1, "failed": 0, "failures": {}, "missing": 2}  # stale
    (run / "manifest.json").write_text(json.dumps(manifest))

    result = finalize(run)
    assert result["samples"]["done"] == 3 and result["samples"]["missing"] == 0
    overview = (run / "report.html").read_text().split("id='accuracy'")[0]
    assert "<b>samples</b><span>3 done, 0 failed of 3</span>" in overview
    said = CliRunner().invoke(app, ["report", str(run)])
    assert said.exit_code == 0, said.output
    assert "samples: 3 done, 0 failed of 3" in said.output


def test_a_task_without_an_accuracy_shows_n_a_in_the_report_and_the_terminal(tmp_path, capsys) -> None:
    """A task whose every sample failed has no accuracy: it read "NaN" in report.html's
    Accuracy table and "NaN" in the terminal; the CSV leaves it empty and the charts say n/a."""
    from types import SimpleNamespace

    from vlmflow.commands.common import print_result
    from vlmflow.run import RunSummary

    store = RecordStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"model": "fake", "data": "fake:1"}}))
    store.write_unit("a", "eval", [{"task": "seen", "error": None, "correct": True}])
    store.write_unit("b", "eval", [{"task": "lost", "error": "DataError: missing.mp4"}])
    result = finalize(tmp_path)
    assert pd.read_csv(tmp_path / "summary" / "accuracy.csv").set_index("task")["accuracy"].isna()["lost"]
    accuracy = (tmp_path / "report.html").read_text().split("id='accuracy'")[1].split("</section>")[0]
    assert "<td>lost</td>" in accuracy and "<td>n/a</td>" in accuracy and "NaN" not in accuracy

    print_result(SimpleNamespace(summary=RunSummary(done=1), report=result, out=tmp_path, rank=0))
    lines = capsys.readouterr().out.splitlines()
    lost = next(line for line in lines if line.split()[:1] == ["lost"])
    assert lost.split()[-1] == "n/a" and "NaN" not in "\n".join(lines)


def test_an_analysis_that_kept_no_sample_has_a_section_saying_why(tmp_path: Path) -> None:
    """`vlmflow attention --sample-mode wrong` on a model that answered everything right
    listed 'attention' in the overview but gave it no section at all. Every analysis type
    the run asked for now has its section, saying 0 samples matched and why, under the
    title it has with samples (flow-screen's was its bare name)."""
    from vlmflow.analyses.base import ordered

    run = tmp_path / "run"
    store = RecordStore(run)
    names = [cls.name for cls in ordered()]
    config = {name: {"sample_mode": "wrong"} for name in names}
    config["pathways"] = {}  # an analysis without a sample_mode
    (run / "manifest.json").write_text(
        json.dumps({"config": {"model": "fake", "data": "fake:3", "analyses": config}})
    )
    for i in range(3):
        store.write_unit(f"s{i}", "eval", [{"task": "t", "model": "fake", "error": None, "correct": True}])
    store.write_unit("s0", "pathways", [{"task": "t", "model": "fake", "error": "PlanError: no layers"}])
    result = finalize(run)
    sections = {s.key: s for s in result["sections"]}
    assert set(sections) == set(names)
    for name in names:
        assert sections[name].notes.startswith("0 samples matched"), name
    # the title the section has with samples, not the bare analysis name ('flow-screen';
    # 'open-ended', whose verb-anchored section has its own title)
    assert [name for name in names if sections[name].title == name] == []
    assert sections["open-ended"].title == "Open-ended knockout (verb anchors)"
    assert sections["flow-screen"].title == "Screened knockout (attribution estimates, top K verified)"
    said = sections["attention"].notes
    assert sections["attention"].title == "Attention to the video"
    assert "sample_mode 'wrong'" in said and "0 of the 3 evaluated" in said
    assert "1 sample failed" in sections["pathways"].notes and "sample_mode" not in sections["pathways"].notes
    page = (run / "report.html").read_text()
    assert page.count("0 samples matched") == len(names)


def test_finalize_without_html_removes_an_earlier_report_that_no_longer_matches(tmp_path: Path) -> None:
    """``finalize(html=False)`` rewrote the summaries and records.parquet but left an
    earlier report.html showing results the records no longer hold; it is removed now, as
    stale summary tables and figures are."""
    run = fake_run(tmp_path / "run")
    finalize(run)
    assert (run / "report.html").exists()
    RecordStore(run).write_unit("s9", "eval", [{"task": "counting", "model": "fake", "error": None}])
    result = finalize(run, html=False)
    assert "report" not in result and not (run / "report.html").exists()
    assert result["records"] == len(pd.read_parquet(run / "records.parquet"))


def test_a_first_token_open_ended_run_without_samples_keeps_the_generic_title(tmp_path: Path) -> None:
    """``--anchor first-token`` records have the generic per-layer view, titled by the
    analysis's name: its zero-sample section keeps that title (the verb anchor's is
    'Open-ended knockout (verb anchors)', with samples or without)."""
    run = tmp_path / "run"
    store = RecordStore(run)
    for anchor, title in (("first-token", "open-ended"), ("verb", "Open-ended knockout (verb anchors)")):
        config = {"open-ended": {"anchor": anchor, "sample_mode": "wrong"}}
        (run / "manifest.json").write_text(
            json.dumps({"config": {"model": "fake", "data": "fake:1", "analyses": config}})
        )
        store.write_unit("s0", "eval", [{"task": "t", "model": "fake", "error": None, "correct": True}])
        section = next(s for s in finalize(run)["sections"] if s.key == "open-ended")
        assert section.title == title and section.notes.startswith("0 samples matched"), anchor


def test_a_verb_run_where_every_sample_was_skipped_says_why(tmp_path: Path) -> None:
    """Every anchor of every sample skipped (a response with too few verbs): the records have
    no ``rel_anchor`` column, so the section fell back to the generic view - titled
    'open-ended', averaging bookkeeping columns (n_verbs, anchor_order) into
    summary/open-ended.csv, no anchor table, and the skip reason nowhere. Now it is the
    verb-anchored section (the run's anchor option decides), its anchor table is written
    and the notes say no anchor was kept and why."""
    run = tmp_path / "run"
    store = RecordStore(run)
    config = {"open-ended": {"anchor": "verb"}}
    manifest = {"config": {"model": "fake", "data": "fake:2", "analyses": config}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    for sid in ("s0", "s1"):
        store.write_unit(sid, "eval", [{"task": "t", "model": "fake", "error": None, "correct": True}])
        base = {"task": "t", "model": "fake", "error": None, "response": "A red ball.", "verbs": []}
        reason = "0 verbs, fewer than 3"
        skipped = [
            {**base, "n_verbs": 0, "anchor": f"verb {k}", "anchor_order": k, "skip_reason": reason}
            for k in (1, 2, 3)
        ]
        store.write_unit(sid, "open-ended", skipped)
    section = next(s for s in finalize(run)["sections"] if s.key == "open-ended")
    assert section.title == "Open-ended knockout (verb anchors)"
    assert not (run / "summary" / "open-ended.csv").exists()
    anchors = pd.read_csv(run / "summary" / "open-ended-anchors.csv")
    assert anchors[["anchor", "kept", "skip_reason"]].values.tolist() == [
        [f"verb {k}", 0, "0 verbs, fewer than 3 (2)"] for k in (1, 2, 3)
    ]
    assert section.notes.startswith("No anchor of any sample was kept")
    assert "verb 1: 0 verbs, fewer than 3 (2)" in section.notes


def test_a_task_name_with_markup_cannot_break_the_chart_data(tmp_path: Path) -> None:
    """A task named ``<!--<script>`` put the page's ``chart-data`` JSON element into the
    HTML parser's script-escape states: the element swallowed the renderer script and no
    chart was drawn. ``<``, ``>`` and ``&`` are now JSON escapes in the embedded data, which
    parses to the same values (the task's name intact)."""
    run = tmp_path / "run"
    store = RecordStore(run)
    (run / "manifest.json").write_text(json.dumps({"config": {"model": "fake", "data": "fake:1"}}))
    tasks = ("<!--<script>", "a</script>&amp;b")
    for i in range(4):
        sid, task = f"s{i}", tasks[i % 2]
        common = {"task": task, "model": "fake", "error": None}
        store.write_unit(sid, "eval", [{**common, "correct": True}])
        store.write_unit(
            sid, "mystery", [{**common, "layer": layer, "score": 0.1 * layer + i} for layer in range(3)]
        )
    finalize(run)
    page = (run / "report.html").read_text()
    raw = re.search(r"id='chart-data'>(.*?)</script>", page, re.S).group(1)
    assert not set(raw) & set("<>&"), raw[:300]
    charts = json.loads(raw)
    assert {p["name"] for p in charts[0]["panels"]} == {f"{t} (n=2)" for t in tasks}
    if CHROMIUM.exists():  # and the browser draws the chart
        dom = chromium("--dump-dom", (run / "report.html").resolve().as_uri(), profile=tmp_path / "p")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'data-charts-rendered="1"' in dom.stdout, dom.stdout[-3000:]
