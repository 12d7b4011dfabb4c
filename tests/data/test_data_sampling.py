"""Frame-index sampling: the paper's PLLaVA segment midpoints and VideoLLaMA3's linspace."""

from __future__ import annotations

import pytest

from vlmflow.data import sample_indices
from vlmflow.errors import DataError, VlmflowError


def test_segment_middle_matches_reference_examples():
    assert sample_indices(300, 8, "segment_middle") == [18, 55, 93, 130, 168, 205, 242, 280]
    bounded = sample_indices(300, 8, "segment_middle", fps=30, bound=(2.0, 6.5))
    assert bounded == [68, 85, 102, 119, 136, 152, 169, 186]


def test_segment_middle_ignores_fps_without_bound():
    assert sample_indices(300, 8, "segment_middle", fps=25) == sample_indices(300, 8)


def test_linspace_includes_first_and_last():
    assert sample_indices(300, 8, "linspace") == [0, 42, 85, 128, 170, 213, 256, 299]
    idx = sample_indices(300, 4, "linspace", fps=30, bound=(2.0, 6.5))
    assert idx[0] == 60 and idx[-1] == 195


@pytest.mark.parametrize("policy", ["segment_middle", "linspace"])
def test_short_video_repeats_indices(policy):
    idx = sample_indices(3, 8, policy)
    assert len(idx) == 8 and set(idx) == {0, 1, 2} and idx == sorted(idx)


@pytest.mark.parametrize(
    ("bound", "match"),
    [
        ((50.0, 60.0), r"starts after the video ends \(30 frames at 10 fps = 3.00s\)"),
        ((3.0, 4.0), "starts after the video ends"),
        ((6.5, 2.0), "starts after it ends"),
        ((float("nan"), 2.0), "not finite"),
        ((0.0, float("inf")), "not finite"),
        ((-5.0, -1.0), "ends before the video starts"),
    ],
)
def test_a_window_that_selects_no_frame_is_an_error(bound, match):
    """Such a window used to collapse onto one frame, repeated num_frames times (the
    reference's get_index indexes past the video there); a window that only overhangs an
    end is clipped to the video."""
    with pytest.raises(DataError, match=match):
        sample_indices(30, 4, fps=10, bound=bound)
    assert sample_indices(30, 4, fps=10, bound=(2.0, 60.0)) == [21, 23, 25, 28]
    assert sample_indices(30, 4, fps=10, bound=(-1.0, 1.0)) == [1, 3, 6, 9]


def test_bad_arguments():
    with pytest.raises(VlmflowError, match="unknown frame sampling policy"):
        sample_indices(10, 4, "random")
    with pytest.raises(VlmflowError, match="needs fps"):
        sample_indices(10, 4, bound=(0.0, 1.0))
    with pytest.raises(VlmflowError, match="0 frames"):
        sample_indices(0, 4)
