"""The attention-map and logit-lens figures and tables, read back from the drawn figures:
what a reader of the report sees (axes, labels, colour bars, bins)."""

from __future__ import annotations

import pandas as pd

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
