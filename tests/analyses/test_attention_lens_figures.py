"""The attention-map and logit-lens figures and tables, read back from the drawn figures:
what a reader of the report sees (axes, labels, colour bars, bins)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlmflow.analyses.attention_maps import attention_frames_figure


def _frames_summary(layers: tuple[int, ...], frames: int = 3) -> pd.DataFrame:
    rows = []
    for cond in ("baseline", "cross-frame"):
        for layer in layers:
            mass = [0.1 * (layer + 1) * (f + 1) for f in range(frames)]
            rows.append(
                {"task": "t", "condition": cond, "query": "last", "layer": layer, "n": 1, "frame_mass": mass}
            )
    return pd.DataFrame(rows)


def test_frames_figure_has_one_row_per_layer_read_labelled_with_its_number() -> None:
    """Layers 0, 10, 20 were drawn on a 1..21 axis spread evenly (rows at y = 4, 11, 18);
    now one row per layer read, ticked 1, 11, 21 (1-based, as the other figures)."""
    fig = attention_frames_figure(_frames_summary((0, 10, 20)), "last")
    ax = fig.axes[0]
    image = ax.get_images()[0]
    assert image.get_array().shape == (3, 3)
    assert list(ax.get_yticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "11", "21"]
    x0, x1, y0, y1 = image.get_extent()
    assert (y0, y1) == (-0.5, 2.5)
    # a long contiguous range keeps one row per layer, with fewer ticks
    fig = attention_frames_figure(_frames_summary(tuple(range(30))), "last")
    ax = fig.axes[0]
    assert ax.get_images()[0].get_array().shape[0] == 30
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "1" and len(labels) <= 15
    assert all(str(int(ax.get_yticks()[k]) + 1) == label for k, label in enumerate(labels))


def _inside_the_figure(fig) -> bool:
    """Every drawn element (tick labels, axis labels, colour bar) within the canvas."""
    fig.canvas.draw()
    box, frame = fig.get_tightbbox(fig.canvas.get_renderer()), fig.bbox_inches
    return box.x0 >= -1e-6 and box.y0 >= -1e-6 and box.x1 <= frame.x1 + 1e-6 and box.y1 <= frame.y1 + 1e-6


def _colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_frames_figure_colour_is_each_layers_share_on_one_labelled_scale() -> None:
    """The colour bar had no label, each panel its own scale, and the first layer's large
    mass darkened every other row."""
    fig = attention_frames_figure(_frames_summary((0, 5, 6)), "last")
    assert _colorbar_labels(fig) == ["share of the layer's video attention"]
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(images) == 2 and images[0].get_clim() == images[1].get_clim()
    rows = np.asarray(images[0].get_array())
    assert rows.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert rows[0] == pytest.approx([1 / 6, 2 / 6, 3 / 6])  # frame masses 0.1, 0.2, 0.3 of layer 1
    assert _inside_the_figure(fig)


def test_overlay_has_one_labelled_colour_bar_for_its_shared_scale() -> None:
    from vlmflow.analyses.attention_maps import attention_overlay_figure

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    grid = [[0, 2, 2], [4, 2, 2]]
    maps = {"baseline": {3: np.linspace(0, 0.4, 8)}, "cross-frame": {3: np.linspace(0, 0.2, 8)}}
    sample = types.SimpleNamespace(id="s0", task="t")
    fig = attention_overlay_figure(frames, grid, 1, maps, [3], sample)
    assert _colorbar_labels(fig) == ["attention (head mean)"]
    heat = [im for ax in fig.axes if ax.get_label() != "<colorbar>" for im in ax.get_images()[1:]]
    assert len(heat) == 4 and all(im.get_clim() == pytest.approx((0.0, 0.4)) for im in heat)
    assert _inside_the_figure(fig)


@pytest.mark.parametrize("entry", [[0, 2, 2], [0, 2, 2, 1]], ids=["row-major", "column-major"])
def test_overlays_place_each_token_by_the_grid_order_the_record_gives(entry) -> None:
    """A record ``video_grid`` entry ``[offset, h, w, 1]`` says the frame's tokens run
    column-major (Mini-InternVL ps_version v1): token 1 then sits bottom-left, not
    top-right, in the attention heatmap and under the logit-lens word."""
    from vlmflow.analyses.attention_maps import attention_overlay_figure
    from vlmflow.analyses.logit_lens import lens_overlay_figure

    frames = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    sample = types.SimpleNamespace(id="s0", task="t")
    weights = np.array([0.0, 1.0, 0.0, 0.0])  # all attention on token 1
    fig = attention_overlay_figure(frames, [entry], 1, {"baseline": {0: weights}}, [0], sample)
    heat = [im for ax in fig.axes if ax.get_label() != "<colorbar>" for im in ax.get_images()[1:]][0]
    cell = np.unravel_index(np.argmax(heat.get_array()), (2, 2))
    words = {0: ["a", "b", "c", "d"]}
    lens = lens_overlay_figure(frames, [entry], 1, words, [0], sample)
    (x, y) = next(t.get_position() for t in lens.axes[0].texts if t.get_text() == "b")
    if len(entry) == 3:
        assert cell == (0, 1) and x > 8 > y  # top-right
    else:
        assert cell == (1, 0) and x < 8 < y  # bottom-left


def test_query_word_map_marks_its_frames_and_keeps_30_layer_labels_inside() -> None:
    """The per-word map had no frame boundaries, frame labels nor x label, and at 30 layers
    its layer tick labels and 'layer' label were cut off at the left edge."""
    from vlmflow.analyses.attention_maps import query_word_figure

    grid = [[0, 2, 2], [4, 2, 3], [10, 2, 2]]  # three frames, the middle one 3 tokens wide
    maps = {layer: np.full(14, 0.01 * (layer + 1)) for layer in range(30)}
    fig = query_word_figure(maps, grid, "white", "baseline")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("frame") and ax.get_ylabel() == "layer"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert list(ax.get_xticks()) == pytest.approx([0.5, 3.0, 5.5])  # centres of widths 2, 3, 2
    frame_lines = sorted(
        line.get_xdata()[0] for line in ax.get_lines() if line.get_xdata()[0] == line.get_xdata()[1]
    )
    assert frame_lines == pytest.approx([1.5, 4.5])
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(k) for k in range(1, 31)]
    assert _inside_the_figure(fig)


def test_logit_lens_summary_tables_share_the_records_integer_layers(tiny_llava, tmp_path) -> None:
    """summary/logit-lens.csv had 0-based float layers with the embeddings at -1.0 while
    logit-lens-top-tokens.csv was 1-based with the embeddings at 0; both now hold the
    records' integer layers (-1 = the embeddings, l = the output of decoder layer l)."""
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.api import Options, run
    from vlmflow.probe import Model

    opts = Options(model="tiny", data="synthetic:1:fixed", tasks=("moving_direction",), progress=False)
    run(opts, [LogitLens(sample_mode="all", overlays=0, min_hits=1)], tmp_path, model=Model(tiny_llava))
    layers = list(range(-1, tiny_llava.language_model().num_layers))
    for name in ("logit-lens", "logit-lens-top-tokens"):
        text = (tmp_path / "summary" / f"{name}.csv").read_text()
        table = pd.read_csv(tmp_path / "summary" / f"{name}.csv")
        assert sorted(set(table["layer"])) == layers, name
        assert table["layer"].dtype.kind == "i" and "-1.0" not in text, name


def test_per_sample_figures_stay_in_the_run_folder_whatever_the_sample_id(tiny_llava, tmp_path) -> None:
    """Sample ids were used as they are for the per-sample figures' file names: the id
    ``../../../ESCAPED`` wrote a PNG outside the run folder, ``sub/dir`` a folder of its own,
    and a 300-character id stopped the report with "File name too long ... fix the disk".
    Each now gets a file named by a slug and a hash of its id, inside the figure's folder;
    a plain id keeps its name, and every caption keeps the id itself."""
    import json

    from vlmflow.analyses.attention_maps import AttentionMaps
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.api import Options, run
    from vlmflow.data import write_video
    from vlmflow.probe import Model
    from vlmflow.report import finalize

    data = tmp_path / "data" / "deep" / "er"
    data.mkdir(parents=True)
    ids = ["../../../ESCAPED", "sub/dir", "L" * 300, "s0"]
    lines = []
    for k, sid in enumerate(ids):
        frames = np.full((8, 32, 32, 3), 40 * k, dtype=np.uint8)
        write_video(data / f"v{k}.mp4", frames, fps=4)
        lines.append(
            json.dumps({"id": sid, "video": f"v{k}.mp4", "question": "Which way does it move?",
                        "options": ["left", "right"], "answer": k % 2, "task": "dir"})
        )  # fmt: skip
    (data / "qa.jsonl").write_text("\n".join(lines) + "\n")
    out = data / "run"
    opts = Options(model="tiny", data=f"jsonl:{data / 'qa.jsonl'}", num_frames=4, progress=False)
    analyses = [
        LogitLens(sample_mode="all", overlays=4, min_hits=1),
        AttentionMaps(sample_mode="all", overlays=4, layers=(0, 1), compare=None, query_words=("way",)),
    ]
    run(opts, analyses, out, model=Model(tiny_llava))

    outside = [p for p in tmp_path.rglob("*.png") if out not in p.parents]
    assert outside == []
    figures = sorted(p.relative_to(out / "figures") for p in (out / "figures").rglob("*.png"))
    per_sample = [p for p in figures if len(p.parts) > 1]
    assert all(len(p.parts) <= 2 for p in figures), figures  # no folder made by an id
    assert {p.parts[0] for p in per_sample} == {"logit-lens", "attention", "attention-words"}
    for folder in ("logit-lens", "attention", "attention-words"):
        names = [p.name for p in per_sample if p.parts[0] == folder]
        assert len(names) == 4 and all(len(n) < 100 for n in names), (folder, names)
    assert Path("logit-lens/s0.png") in figures and Path("attention/s0.png") in figures
    assert Path("attention-words/s0-way-baseline.png") in figures
    result = finalize(out)
    captions = set(result["figures"])
    for sid in ids:
        assert f"Lens tokens over the frames: {sid}" in captions
        assert f"Attention over the frames: {sid}" in captions


def test_a_report_from_another_folder_keeps_the_overlays_of_a_relative_dataset(
    tiny_llava, tmp_path, monkeypatch
) -> None:
    """``--data jsonl:ds/qa.jsonl`` (relative), then ``vlmflow report RUN`` from another
    working folder: the report loaded the samples again from the path as typed, failed, and
    removed the per-sample overlays as stale. The run now records the path it resolved
    (``provenance.data.path``) and the report loads from there; the same command from the
    same folder still resumes. When the dataset is gone the earlier overlays are kept and
    shown, and the section's note (not only a log line) says why."""
    import json

    from typer.testing import CliRunner

    from vlmflow.analyses.attention_maps import AttentionMaps
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.api import Options, run
    from vlmflow.cli import app
    from vlmflow.data import write_video
    from vlmflow.probe import Model
    from vlmflow.rundir import RunDir

    home = tmp_path / "home"
    (home / "ds").mkdir(parents=True)
    lines = []
    for k in range(2):
        write_video(home / "ds" / f"v{k}.mp4", np.full((8, 32, 32, 3), 60 * k, dtype=np.uint8), fps=4)
        lines.append(
            json.dumps({"id": f"s{k}", "video": f"v{k}.mp4", "question": "Which way does it move?",
                        "options": ["left", "right"], "answer": k, "task": "dir"})
        )  # fmt: skip
    (home / "ds" / "qa.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    monkeypatch.chdir(home)
    opts = Options(model="tiny", data="jsonl:ds/qa.jsonl", num_frames=4, progress=False)

    def analyses():
        return [
            LogitLens(sample_mode="all", overlays=2, min_hits=1),
            AttentionMaps(sample_mode="all", overlays=2, layers=(0,), compare=None),
        ]

    run(opts, analyses(), out, model=Model(tiny_llava))
    overlays = sorted((out / "figures").glob("*/s*.png"))
    assert [p.relative_to(out / "figures").as_posix() for p in overlays] == [
        "attention/s0.png", "attention/s1.png", "logit-lens/s0.png", "logit-lens/s1.png"
    ]  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["data"] == "jsonl:ds/qa.jsonl"  # the configuration as typed
    assert manifest["provenance"]["data"]["path"] == str(home / "ds" / "qa.jsonl")
    # a folder from before the path was recorded: the spec as typed; the same command from
    # the same folder resumes it (nothing left to do) and records the path
    for file in (out / "manifest.json", out / "records" / "run.json"):
        old = json.loads(file.read_text())
        del old["provenance"]["data"]["path"]
        file.write_text(json.dumps(old))
    assert RunDir(out).data_specs() == ["jsonl:ds/qa.jsonl"]
    again = run(opts, analyses(), out, model=Model(tiny_llava))
    assert again.summary.skipped == 2 and again.summary.done == 0
    assert RunDir(out).data_specs() == [f"jsonl:{home / 'ds' / 'qa.jsonl'}", "jsonl:ds/qa.jsonl"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = {p: p.stat().st_mtime_ns for p in overlays}
    said = CliRunner().invoke(app, ["report", str(out)])
    assert said.exit_code == 0, said.output
    assert all(p.exists() and p.stat().st_mtime_ns != before[p] for p in overlays)  # drawn again
    assert "not drawn again" not in (out / "report.html").read_text()

    (home / "ds").rename(home / "moved")  # the dataset is gone: the earlier overlays stay
    said = CliRunner().invoke(app, ["report", str(out)])
    assert said.exit_code == 0, said.output
    assert all(p.exists() for p in overlays)
    page = (out / "report.html").read_text()
    assert page.count("were not drawn again") == 2 and "JSONL file not found" in page
    assert page.count("the 2 an earlier report drew are kept and shown") == 2
    for name in ("logit-lens/s0.png", "attention/s1.png"):
        assert f"({Path(name).name})</figcaption>" in page


def test_file_stems_of_two_ids_never_coincide_even_when_one_looks_hashed() -> None:
    """An id with no ASCII letter or digit gets a bare 10-hex digest as its stem; a plain id
    equal to that digest kept its own name, so the two shared one file."""
    from vlmflow.rundir import file_stem

    for text in ("日本語", "#", "--", "ü"):
        stem = file_stem(text)
        assert file_stem(stem) != stem, (text, stem)
    assert file_stem("sample-3") == "sample-3" and file_stem("abc") == "abc"


def test_overlays_drawn_under_the_raw_id_by_an_earlier_version_are_kept_when_the_data_moved(
    tiny_llava, tmp_path, monkeypatch
) -> None:
    """Before ids became file stems a figure was ``figures/<analysis>/<id>.png``; an id like
    the benchmark loaders' ``clip.mp4#3`` is not a plain stem, so when the dataset cannot be
    loaded again the report looked for the new name only and removed the earlier figure as
    stale ('no earlier one is kept')."""
    import json

    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.api import Options, run
    from vlmflow.data import write_video
    from vlmflow.probe import Model
    from vlmflow.report import finalize
    from vlmflow.rundir import file_stem

    ds = tmp_path / "ds"
    ds.mkdir()
    ids = ["clip 1#q0", "clip 1#q1"]
    lines = []
    for k, sid in enumerate(ids):
        write_video(ds / f"v{k}.mp4", np.full((8, 32, 32, 3), 60 * k, dtype=np.uint8), fps=4)
        lines.append(json.dumps({"id": sid, "video": f"v{k}.mp4", "question": "Which way does it move?",
                                 "options": ["left", "right"], "answer": k, "task": "dir"}))  # fmt: skip
    (ds / "qa.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    opts = Options(model="tiny", data=f"jsonl:{ds / 'qa.jsonl'}", num_frames=4, progress=False)
    run(opts, [LogitLens(sample_mode="all", overlays=2, min_hits=1)], out, model=Model(tiny_llava))
    folder = out / "figures" / "logit-lens"
    for sid in ids:  # as an earlier version named them
        (folder / f"{file_stem(sid)}.png").rename(folder / f"{sid}.png")
    (ds / "qa.jsonl").rename(ds / "moved.jsonl")
    finalize(out)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{sid}.png" for sid in ids)
    page = (out / "report.html").read_text()
    assert "the 2 an earlier report drew are kept and shown" in page
