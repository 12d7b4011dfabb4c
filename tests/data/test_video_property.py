"""Damaged videos (property-based, bounded): cut at any byte, bytes overwritten, zero
length, the wrong extension, frame folders with broken or odd images, too short, one
frame, huge frames, a decode that runs too long. Each gives the frames asked for or one
clear one-line ``DataError`` naming the file, never a hang or another exception; and a run
over such a dataset records each as a failure with its reason and finishes the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmflow.data.video import load_frames, write_video
from vlmflow.errors import DataError

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
N = 4


def frames(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(t)
    return rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for ext in (".mp4", ".mkv"):
        out[ext] = write_video(root / f"v{ext}", frames(12), fps=4).read_bytes()
    out["one.mp4"] = write_video(root / "one.mp4", frames(1), fps=4).read_bytes()
    return out


def decoded_or_refused(path: Path) -> None:
    try:
        got = load_frames(path, N, cache=False)
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(path) in message, message
        return
    assert got.dtype == np.uint8 and got.ndim == 4 and got.shape[0] == N and got.shape[-1] == 3


@FAST
@given(
    kind=st.sampled_from([".mp4", ".mkv", "one.mp4"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16)), max_size=3),
    suffix=st.sampled_from([".mp4", ".mkv", ".avi", ".txt", ""]),
)
# a one-frame mp4 cut inside its moov box: PyAV opens it with no codec context (None),
# which read_video met with an AttributeError
@example(kind="one.mp4", cut=0.875, flips=[], suffix=".mp4")
def test_damaged_video_files_decode_or_fail_clearly(
    tmp_path_factory, clips, kind, cut, flips, suffix
) -> None:
    data = bytearray(clips[kind][: int(len(clips[kind]) * cut)])
    for where, junk in flips:
        k = int(len(data) * where)
        data[k : k + len(junk)] = junk
    path = tmp_path_factory.getbasetemp() / f"damaged{suffix}"
    path.write_bytes(bytes(data))
    decoded_or_refused(path)


def test_zero_length_wrong_extension_one_frame_and_too_short(tmp_path: Path, clips) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_frames(tmp_path / "empty.mp4", N, cache=False)
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    with pytest.raises(DataError, match="cannot decode video .*text.mp4"):
        load_frames(tmp_path / "text.mp4", N, cache=False)
    (tmp_path / "real.txt").write_bytes(clips[".mp4"])  # a video under the wrong name still decodes
    assert load_frames(tmp_path / "real.txt", N, cache=False).shape == (N, 32, 48, 3)
    (tmp_path / "one.mp4").write_bytes(clips["one.mp4"])  # 1 frame for 4 asked: repeated
    one = load_frames(tmp_path / "one.mp4", N, cache=False)
    assert one.shape == (N, 32, 48, 3) and all((one[i] == one[0]).all() for i in range(N))


@FAST
@given(
    sizes=st.lists(st.sampled_from([(8, 8), (8, 8), (8, 8), (6, 8)]), min_size=1, max_size=5),
    broken=st.lists(st.sampled_from(["garbage", "truncated", "empty", "wrong_ext"]), max_size=2),
)
def test_frame_folders_decode_or_fail_clearly(tmp_path_factory, sizes, broken) -> None:
    import shutil

    folder = tmp_path_factory.getbasetemp() / "frames"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(frames(1, h, w)[0]).save(folder / f"{i:03d}.png")
    for j, kind in enumerate(broken):
        target = folder / f"{j:03d}.png"
        if kind == "garbage":
            target.write_bytes(b"\x89PNG not really")
        elif kind == "truncated" and target.exists():
            target.write_bytes(target.read_bytes()[:40])
        elif kind == "empty":
            target.write_bytes(b"")
        elif kind == "wrong_ext":
            (folder / f"{j:03d}.jpg").write_bytes(b"GIF89a")
    decoded_or_refused(folder)


def test_huge_frames_are_refused_before_decoding(tmp_path: Path, clips, monkeypatch) -> None:
    """Frames above the pixel limit (64 Mpx by default; lowered here so the files stay tiny)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (90, 90)).save(folder / "000.png")
    (tmp_path / "v.mp4").write_bytes(clips[".mp4"])
    monkeypatch.setenv("VLMFLOW_MAX_FRAME_PIXELS", "1000")  # a 90 x 90 image, 48 x 32 video frames
    with pytest.raises(DataError, match=r"000.png has 90x90 frames .*VLMFLOW_MAX_FRAME_PIXELS"):
        load_frames(folder, N, cache=False)
    with pytest.raises(DataError, match=r"v.mp4 has 48x32 frames"):
        load_frames(tmp_path / "v.mp4", N, cache=False)


def test_decoding_has_a_time_bound(tmp_path: Path, clips, monkeypatch) -> None:
    (tmp_path / "v.mkv").write_bytes(clips[".mkv"])
    monkeypatch.setenv("VLMFLOW_DECODE_TIMEOUT_S", "0")  # every decode is already too late
    with pytest.raises(DataError, match=r"took more than 0s \(VLMFLOW_DECODE_TIMEOUT_S\)"):
        load_frames(tmp_path / "v.mkv", N, cache=False)
    monkeypatch.setenv("VLMFLOW_DECODE_TIMEOUT_S", "60")
    assert load_frames(tmp_path / "v.mkv", N, cache=False).shape[0] == N


def test_a_run_over_broken_videos_records_each_failure_and_finishes(
    tiny_llava_path: Path, tmp_path: Path, clips, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from vlmflow.cli import app
    from vlmflow.store import read_records

    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "cache"))
    (tmp_path / "good.mp4").write_bytes(clips[".mp4"])
    (tmp_path / "cut.mp4").write_bytes(clips[".mp4"][:300])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "000.png").write_bytes(b"broken")
    videos = {"good": "good.mp4", "cut": "cut.mp4", "empty": "empty.mp4", "dir": "dir", "gone": "gone.mp4"}
    qa = tmp_path / "qa.jsonl"
    item = {"question": "What moves?", "options": ["left", "right"], "answer": 0}
    qa.write_text("\n".join(json.dumps({"id": k, "video": v, **item}) for k, v in videos.items()))
    out = tmp_path / "run"
    args = ["eval", "--model", str(tiny_llava_path), "--data", f"jsonl:{qa}", "--num-frames", "4"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "done: 1 samples, 4 failed" in result.output
    failures = json.loads((out / "manifest.json").read_text())["samples"]["failures"]
    assert set(failures) == {"cut", "empty", "dir", "gone"}
    assert "is empty" in failures["empty"] and "not found" in failures["gone"]
    assert "cannot read frame image" in failures["dir"]
    assert all(f"sample {k!r}" in failures[k] for k in failures)  # each names its sample
    records = read_records(out)
    assert records.loc[records["sample_id"] == "good", "error"].isna().all()
