"""LongVideoBench's start-aligned frame sampling (the ``lvb`` policy), with exact examples."""

from __future__ import annotations

import pytest

from vlmflow.data import sample_indices
from vlmflow.errors import VlmflowError


def reference_lvb(duration: float, fps: float, max_num_frames: int = 8) -> list[int]:
    """LongVideoBench's ``load_video`` restated (REFERENCE_NOTES §1.5), padded to 8 as the paper."""
    total_valid_frames = int(duration * fps)
    num_frames = min(max_num_frames, int(duration))
    idx = [int(total_valid_frames / num_frames) * i for i in range(num_frames)]
    return idx + [idx[-1]] * (max_num_frames - len(idx))


def test_lvb_whole_video_examples():
    # 10 s at 30 fps: 8 frames, 37 apart, from frame 0; the last frame is never taken.
    assert sample_indices(300, 8, "lvb", fps=30) == [0, 37, 74, 111, 148, 185, 222, 259]
    # 5.5 s: only int(5.5) = 5 frames, the last one repeated up to 8.
    assert sample_indices(165, 8, "lvb", fps=30) == [0, 33, 66, 99, 132, 132, 132, 132]


def test_lvb_duration_from_bound_matches_reference():
    """The loader passes (0, annotation duration): the reference counts frames from it."""
    assert sample_indices(300, 8, "lvb", fps=30, bound=(0.0, 5.5)) == [0, 33, 66, 99, 132, 132, 132, 132]
    for duration, fps, n in [(10.0, 30, 300), (9.97, 29.97, 299), (61.3, 25, 1533), (3.0, 8, 24)]:
        got = sample_indices(n, 8, "lvb", fps=fps, bound=(0.0, duration))
        assert got == reference_lvb(duration, fps), (duration, fps)


def test_lvb_differs_from_segment_middle():
    assert sample_indices(300, 8, "lvb", fps=30) != sample_indices(300, 8, "segment_middle", fps=30)


def test_lvb_edge_cases():
    # A clip under a second (the reference divides by zero): one frame, repeated.
    assert sample_indices(6, 8, "lvb", fps=12) == [0] * 8
    # An annotation longer than the file: indices past the end land on the last frame.
    assert sample_indices(300, 8, "lvb", fps=30, bound=(0.0, 20.0)) == [0, 75, 150, 225, 299, 299, 299, 299]
    # A window that starts later is start-aligned at its own start.
    assert sample_indices(300, 4, "lvb", fps=30, bound=(2.0, 6.0)) == [60, 90, 120, 150]
    with pytest.raises(VlmflowError, match="lvb sampling policy needs fps"):
        sample_indices(300, 8, "lvb")
