"""A run folder recovers from a damaged or lost manifest whatever command comes next: the
pathway search and the report rebuild it (from ``records/run.json``) as run and merge do,
and read the run's options from it (docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlmflow
from vlmflow.errors import RunError
from vlmflow.probe import Model
from vlmflow.report import finalize
from vlmflow.rundir import RunDir


def _lose(out: Path, how: str) -> None:
    manifest = out / "manifest.json"
    if how == "damaged":
        manifest.write_bytes(manifest.read_bytes()[:200])  # cut short, as a copy that stopped part-way
    else:
        manifest.unlink()


def _search_options(path: Path) -> vlmflow.Options:
    return vlmflow.Options(
        model=str(path),
        data="synthetic:2",
        tasks=("moving_direction", "object_count"),
        num_frames=4,
        progress=False,
    )


def _search(tiny_llava, path: Path, out: Path, **kw):
    kw = {"step": 4, "seeds": (0,), "model": Model(tiny_llava), **kw}
    return vlmflow.search_and_evaluate(_search_options(path), out, **kw)


@pytest.mark.parametrize("how", ["damaged", "missing"])
def test_the_same_pathway_search_rebuilds_a_lost_manifest_and_resumes(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path, how: str
) -> None:
    """The error of a damaged manifest says to re-run the same command; ``pathways --search``
    read it in its checks before the search and failed again with the same advice. Now it
    rebuilds it, as ``run`` and ``merge`` do, and resumes computing nothing again."""
    out = tmp_path / "run"
    first = _search(tiny_llava, tiny_llava_path, out)
    config = RunDir(out).manifest()["config"]
    markers = (out / "records" / "shard-00000.done.jsonl").read_bytes()
    _lose(out, how)
    again = _search(tiny_llava, tiny_llava_path, out)
    assert (again.summary.done, again.summary.skipped) == (0, first.summary.done)
    assert RunDir(out).manifest()["config"] == config
    assert (out / "records" / "shard-00000.done.jsonl").read_bytes() == markers
    assert (out / "manifest.json.damaged").exists() == (how == "damaged")


@pytest.mark.parametrize("how", ["damaged", "missing"])
def test_the_report_rebuilds_a_lost_manifest_and_reads_the_runs_options(
    tiny_llava_path: Path, tmp_path: Path, how: str
) -> None:
    """``vlmflow report`` (``finalize``) on a folder whose manifest was lost read the run's
    options from nothing: the attention section said the comparison cut "every layer" where
    the run cut layer 1 only, and the report's Manifest was empty; a damaged one stopped it.
    Now it rebuilds the manifest from records/run.json and reports the run as it was."""
    out = tmp_path / "run"
    opts = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("object_count",), progress=False
    )
    vlmflow.run(opts, [vlmflow.AttentionMaps(layers="0-1", compare_layers=1, sample_mode="all")], out)
    config = RunDir(out).manifest()["config"]
    said = "in layers 1 only"
    assert said in (out / "report.html").read_text()
    _lose(out, how)
    result = finalize(out)
    assert result["records"] > 0
    assert RunDir(out).manifest()["config"] == config
    html = (out / "report.html").read_text()
    assert said in html and "compare_layers" in html  # the Manifest shows the run's options


@pytest.mark.parametrize("how", ["damaged", "missing"])
def test_a_pathway_search_of_another_configuration_is_refused_before_searching_a_lost_manifest(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """With the manifest lost, the checks before the search found nothing to compare and the
    search of another configuration ran, to be refused only after it. Now the folder's
    configuration (kept in records/run.json) refuses it up front."""
    from vlmflow.analyses import pathways

    out = tmp_path / "run"
    _search(tiny_llava, tiny_llava_path, out)
    _lose(out, how)

    def no_search(*a, **k):
        raise AssertionError("the search ran before the refusal")

    monkeypatch.setattr(pathways, "search_pathway", no_search)
    with pytest.raises(RunError, match="another configuration") as refused:
        _search(tiny_llava, tiny_llava_path, out, tolerance=0.5)
    assert "nothing was searched" in str(refused.value)
    assert json.loads((out / "records" / "run.json").read_text())["config"]["search"]["tolerance"] == 0.02


@pytest.mark.parametrize("what", ["empty-folder", "other-files"])
def test_a_report_of_a_folder_that_is_no_run_leaves_no_lock_behind(tmp_path: Path, what: str) -> None:
    """``finalize`` (``vlmflow report``) on a folder that is not a run folder took the run lock
    first, so the refusal left a run.lock in it. Now the folder is left as it was found."""
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    if what == "other-files":
        (folder / "notes.txt").write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(RunError, match="not a run folder"):
        finalize(folder)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_dtype_check_of_a_resume_reads_the_manifest_once(tmp_path: Path, monkeypatch) -> None:
    """``_check_computed_in`` read manifest.json twice, once to check the dtype and input
    processing and once to complete them; it now checks and completes the one copy it read."""
    from types import SimpleNamespace

    import torch

    from vlmflow.api import _check_computed_in

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_manifest({"config": {"model": "m"}, "computed_in": {"dtype": "float32"}})
    reads = []
    real = RunDir.manifest
    monkeypatch.setattr(RunDir, "manifest", lambda self: reads.append(1) or real(self))
    adapter = SimpleNamespace(dtype=torch.float32, device="cpu", processing=lambda: {"frame_policy": "p"})
    _check_computed_in(run, adapter, SimpleNamespace(model="m"))
    assert len(reads) == 1
    assert json.loads(run.manifest_path.read_text())["computed_in"] == {
        "dtype": "float32",
        "frame_policy": "p",
    }


@pytest.mark.parametrize(
    "stored, given",
    [("range(0, 2)", range(0, 2)), ([1, 0], [1, 0]), ([1, 0, 1], (0, 1))],
    ids=["range", "unsorted-list", "repeats"],
)
def test_a_folder_whose_layers_were_stored_as_given_resumes(
    tiny_llava_path: Path, tmp_path: Path, stored, given
) -> None:
    """Before the analyses normalised their layer options, a Python run stored them as given:
    ``layers=range(0, 2)`` as the text "range(0, 2)", a list in the caller's order. The same
    call now normalises them ([0, 1]), so the folder was refused as "another configuration"
    and its finished units could not be resumed. Now the stored options are read the same
    way: it resumes, computing nothing again, and the manifest keeps the normalised form."""
    out = tmp_path / "run"
    opts = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("object_count",), progress=False
    )
    vlmflow.run(opts, [vlmflow.AttentionMaps(layers=given, sample_mode="all")], out)
    for path in (out / "manifest.json", out / "records" / "run.json"):  # as the old version wrote them
        kept = json.loads(path.read_text())
        kept["config"]["analyses"]["attention"]["layers"] = stored
        path.write_text(json.dumps(kept))
    again = vlmflow.run(opts, [vlmflow.AttentionMaps(layers=given, sample_mode="all")], out)
    assert (again.summary.done, again.summary.skipped) == (0, 1)
    assert RunDir(out).manifest()["config"]["analyses"]["attention"]["layers"] == [0, 1]
    with pytest.raises(RunError, match="another configuration"):  # other layers are still refused
        vlmflow.run(opts, [vlmflow.AttentionMaps(layers=[1], sample_mode="all")], out)


def _drop_units(out: Path, analyses: set[str] | None = None) -> None:
    """Remove the rows and done markers of ``analyses`` (None: every unit) from the records."""
    for shard in sorted((out / "records").glob("shard-*.jsonl")):
        lines = shard.read_bytes().splitlines(keepends=True)
        kept = [ln for ln in lines if analyses is not None and json.loads(ln)["analysis"] not in analyses]
        shard.write_bytes(b"".join(kept))


@pytest.mark.parametrize("gone", ["one-analysis", "every-record"])
def test_a_report_shows_no_result_its_records_no_longer_hold(
    tiny_llava_path: Path, tmp_path: Path, gone: str
) -> None:
    """Records that read back empty, for one analysis or for the whole run, left the earlier
    report's tables, figures and report.html in place: the folder showed results no record
    held. Now a report removes them (the merged records.parquet, perhaps their last copy, is
    kept aside as records.parquet.old), and keeps what the records still hold."""
    out = tmp_path / "run"
    opts = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("object_count",), progress=False
    )
    analyses = [
        vlmflow.AnswerProbability(sample_mode="all"),
        vlmflow.AttentionMaps(layers="0-1", sample_mode="all"),
    ]
    vlmflow.run(opts, analyses, out)
    assert (out / "summary" / "answer-prob.csv").exists() and (out / "figures" / "answer-prob.png").exists()
    attention = sorted(p.name for p in (out / "figures").glob("attention*.png"))
    assert attention
    parquet = (out / "records.parquet").read_bytes()
    _drop_units(out, {"answer-prob"} if gone == "one-analysis" else None)
    result = finalize(out)
    assert not (out / "summary" / "answer-prob.csv").exists()
    assert not (out / "figures" / "answer-prob.png").exists()
    if gone == "one-analysis":
        assert sorted(p.name for p in (out / "figures").glob("attention*.png")) == attention
        assert (out / "summary" / "accuracy.csv").exists() and (out / "report.html").exists()
        assert "answer-prob" not in set(RunDir(out).records()["analysis"])
    else:
        assert result == {"records": 0}
        assert not list((out / "summary").glob("*.csv")) and not list((out / "figures").rglob("*.png"))
        assert not (out / "report.html").exists() and not (out / "records.parquet").exists()
        assert (out / "records.parquet.old").read_bytes() == parquet


def test_a_pathway_search_over_records_of_an_unknown_run_is_refused_before_searching(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records with neither a manifest nor records/run.json (a folder from before run.json
    whose manifest was deleted, or records copied in) are refused by the run; the search
    used to run first. Now it is refused before the search, and the folder is left as it was."""
    from vlmflow.analyses import pathways

    out = tmp_path / "run"
    _search(tiny_llava, tiny_llava_path, out)
    (out / "manifest.json").unlink()
    (out / "records" / "run.json").unlink()
    before = sorted(p.name for p in out.rglob("*"))

    def no_search(*a, **k):
        raise AssertionError("the search ran before the refusal")

    monkeypatch.setattr(pathways, "search_pathway", no_search)
    with pytest.raises(RunError, match="no manifest.json but its records/ holds") as refused:
        _search(tiny_llava, tiny_llava_path, out)
    assert "nothing was searched" in str(refused.value)
    assert sorted(p.name for p in out.rglob("*")) == before
