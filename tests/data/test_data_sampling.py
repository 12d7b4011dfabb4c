"""Frame-index sampling: the paper's PLLaVA segment midpoints and VideoLLaMA3's linspace."""

from __future__ import annotations

import pytest

from vlmflow.data import sample_indices
from vlmflow.errors import VlmflowError


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


def test_bound_past_the_end_collapses_onto_last_frame():
    assert sample_indices(30, 4, fps=10, bound=(50.0, 60.0)) == [29, 29, 29, 29]


def test_bad_arguments():
    with pytest.raises(VlmflowError, match="unknown frame sampling policy"):
        sample_indices(10, 4, "random")
    with pytest.raises(VlmflowError, match="needs fps"):
        sample_indices(10, 4, bound=(0.0, 1.0))
    with pytest.raises(VlmflowError, match="0 frames"):
        sample_indices(0, 4)
