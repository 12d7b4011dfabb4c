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


def _options(model: Path, **kw) -> vlmflow.Options:
    return vlmflow.Options(
        model=str(model), data="synthetic:1:fixed", tasks=("object_count",), progress=False, **kw
    )


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
