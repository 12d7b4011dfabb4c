"""Decoding real container files written with PyAV, seeking, frame folders, errors, cache."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from vlmflow.data import load_frames, load_sample_frames, sample_indices, write_video
from vlmflow.data import video as video_mod
from vlmflow.errors import DataError
from vlmflow.sample import Sample

av = pytest.importorskip("av")


def palette(n: int) -> np.ndarray:
    """``n`` flat colours, far enough apart (40 levels) to tell apart after lossy coding."""
    i = np.arange(n)
    return np.stack([(i % 7) * 40, (i // 7 % 7) * 40, (i // 49 % 7) * 40], axis=1).astype(np.uint8)


def flat_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """``(n, h, w, 3)`` frames, frame i one flat colour ``palette(n)[i]``."""
    return np.ascontiguousarray(np.broadcast_to(palette(n)[:, None, None, :], (n, h, w, 3)))


def which_frames(frames: np.ndarray, n: int) -> tuple[list[int], float]:
    """For decoded frames, the index of the nearest palette colour and the worst error."""
    means = frames.reshape(len(frames), -1, 3).astype(float).mean(axis=1)
    pal = palette(n).astype(float)
    idx = [int(np.argmin(((pal - m) ** 2).sum(axis=1))) for m in means]
    err = max(float(np.abs(frames[k].astype(float) - pal[j]).max()) for k, j in enumerate(idx))
    return idx, err


def _has_encoder(*names: str) -> bool:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return True
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing encoder
            continue
    return False


# extension, encoders the writer may pick, frames, fps, per-pixel tolerance
CONTAINERS = [
    ("mp4", ("libx264", "h264", "mpeg4"), 60, 30, 12),
    ("mkv", ("libx264", "h264", "mpeg4"), 60, 30, 12),
    ("mov", ("libx264", "h264", "mpeg4"), 60, 30, 12),
    ("webm", ("libvpx-vp9", "libvpx", "vp9", "vp8"), 60, 30, 12),
    ("avi", ("mpeg4", "mjpeg"), 60, 30, 12),
    # gif stores 3-3-2 bit colour (with dithering), so only the mean colour is close.
    ("gif", ("gif",), 20, 10, None),
]


@pytest.mark.parametrize(("ext", "encoders", "n", "fps", "tol"), CONTAINERS, ids=lambda v: v)
def test_decode_container_picks_the_right_frames(tmp_path, ext, encoders, n, fps, tol):
    if not _has_encoder(*encoders):
        pytest.skip(f"PyAV has no {ext} encoder ({', '.join(encoders)})")
    path = write_video(tmp_path / f"clip.{ext}", flat_frames(n), fps=fps, gop_size=6)
    frames = load_frames(path, num_frames=8, cache=False)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    got, err = which_frames(frames, n)
    assert got == sample_indices(n, 8), f"{ext}: decoded frames {got}"
    if tol is not None:
        assert err <= tol, f"{ext}: a pixel is {err} levels off its frame's colour"


def test_linspace_and_bound_pick_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", flat_frames(90), fps=30, gop_size=10)
    got, _ = which_frames(load_frames(path, 5, policy="linspace", cache=False), 90)
    assert got == [0, 22, 44, 66, 89]
    bounded = load_frames(path, 4, bound=(1.0, 2.0), cache=False)
    got, _ = which_frames(bounded, 90)
    assert got == sample_indices(90, 4, fps=30, bound=(1.0, 2.0)) == [33, 41, 48, 55]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_seeking_decodes_few_frames(tmp_path, ext):
    """8 frames of a 300-frame file: seek to keyframes, not a decode of the whole file."""
    path = write_video(tmp_path / f"long.{ext}", flat_frames(300, 32, 32), fps=30, gop_size=10)
    frames, info = video_mod.read_video(path, 8)
    assert info.method == "seek"
    assert info.decoded < 100, f"decoded {info.decoded} of 300 frames to get 8"
    assert which_frames(frames, 300)[0] == [18, 55, 93, 130, 168, 205, 242, 280]
    sequential, seq_info = video_mod.read_video(path, 8, allow_seek=False)
    assert seq_info.method == "sequential" and seq_info.decoded == 281
    np.testing.assert_array_equal(frames, sequential)


def test_short_video_repeats_frames(tmp_path):
    path = write_video(tmp_path / "short.mp4", flat_frames(3), fps=8)
    got, _ = which_frames(load_frames(path, 8, cache=False), 3)
    assert got == [0, 0, 0, 1, 1, 1, 2, 2]


def test_frame_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    pal = palette(12)
    for i in range(12):  # names sort in frame order; MVBench's folders start at 00001
        Image.fromarray(np.full((20, 30, 3), pal[i], np.uint8)).save(folder / f"{i + 1:05d}.png")
    (folder / "notes.txt").write_text("not a frame")
    frames = load_frames(folder, 4, cache=False)
    assert frames.shape == (4, 20, 30, 3)
    assert which_frames(frames, 12) == (sample_indices(12, 4), 0.0)
    # a bound is read at 3 fps unless told otherwise
    got, _ = which_frames(load_frames(folder, 2, bound=(1.0, 3.0), cache=False), 12)
    assert got == sample_indices(12, 2, fps=3, bound=(1.0, 3.0))
    got, _ = which_frames(load_frames(folder, 2, bound=(0.5, 1.0), folder_fps=6, cache=False), 12)
    assert got == sample_indices(12, 2, fps=6, bound=(0.5, 1.0))


def test_write_video_pads_odd_sizes(tmp_path):
    path = write_video(tmp_path / "odd.mp4", flat_frames(4, 15, 21), fps=4)
    assert load_frames(path, 2, cache=False).shape == (2, 16, 22, 3)


@pytest.mark.parametrize("ext", ["avi", "mkv"])
def test_write_video_with_the_mjpeg_codec(tmp_path, ext):
    """``write_video(..., codec="mjpeg")`` used to fail: it set yuv420p, which the mjpeg
    encoder refuses (it takes full-range yuvj420p)."""
    if not _has_encoder("mjpeg"):
        pytest.skip("PyAV has no mjpeg encoder")
    path = write_video(tmp_path / f"clip.{ext}", flat_frames(30), fps=10, codec="mjpeg")
    got, err = which_frames(load_frames(path, 8, cache=False), 30)
    assert got == sample_indices(30, 8) and err <= 12


# ----------------------------------------------------------------------------- broken files


def _raises_naming(path, match: str):
    with pytest.raises(DataError, match=match) as info:
        load_frames(path, 8, cache=False)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    _raises_naming(tmp_path / "nope.mp4", "not found")


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    _raises_naming(path, "cannot decode")


def test_truncated_mp4(tmp_path):
    data = write_video(tmp_path / "full.mp4", flat_frames(60), fps=30).read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    _raises_naming(path, "cannot decode")


def test_truncated_mkv(tmp_path):
    """Matroska opens without its end; the missing frames must still be noticed."""
    data = write_video(tmp_path / "full.mkv", flat_frames(120, 32, 32), fps=30).read_bytes()
    path = tmp_path / "half.mkv"
    path.write_bytes(data[: len(data) // 2])
    _raises_naming(path, "truncated")


def _write_avi(path, frames, codec: str, fps: int = 30):
    """An avi of ``frames`` in ``codec`` (mpeg4, or mjpeg with its full-range yuvj420p)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = 12
        for arr in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("codec", ["mpeg4", "mjpeg"])
def test_truncated_avi(tmp_path, codec):
    """An avi cut to 30% loses its index (at the end) with its tail: it used to be read as a
    shorter video, every frame from the first 1.2 s of a 10 s clip, with no complaint."""
    if not _has_encoder(codec):
        pytest.skip(f"PyAV has no {codec} encoder")
    data = _write_avi(tmp_path / "full.avi", flat_frames(300, 32, 32), codec).read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) * 3 // 10])
    _raises_naming(path, r"is truncated: it declares 300 frames but only \d+ are stored")
    with pytest.raises(DataError, match="is truncated"):
        video_mod.read_video(path, 8, allow_seek=False)
    # an intact avi still reads, by either reader
    for seek in (True, False):
        frames, info = video_mod.read_video(tmp_path / "full.avi", 8, allow_seek=seek)
        assert info.num_total == 300
        assert which_frames(frames, 300)[0] == sample_indices(300, 8), f"seek={seek}"


def test_an_avi_with_dropped_frames_is_not_truncated(tmp_path):
    """An avi's dropped frames are empty chunks: they count in its declared length (60) but
    the demuxer skips them (54 packets); the file is whole, and reads as its 54 frames."""
    if not _has_encoder("mjpeg"):
        pytest.skip("PyAV has no mjpeg encoder")
    path = tmp_path / "dropped.avi"
    kept = [i for i in range(60) if i % 10 != 5]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i, arr in enumerate(flat_frames(60, 32, 32)):
            if i not in kept:
                empty = av.Packet(b"")
                empty.stream, empty.pts, empty.dts, empty.time_base = stream, i, i, Fraction(1, 30)
                out.mux(empty)
                continue
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        if c.streams.video[0].frames != 60:
            pytest.skip("the avi muxer did not count the empty chunks")
    for seek in (True, False):
        frames, info = video_mod.read_video(path, 8, allow_seek=seek)
        assert info.num_total == 54, f"seek={seek}"
        assert which_frames(frames, 60)[0] == [kept[i] for i in sample_indices(54, 8)], f"seek={seek}"


def _outcome(path, seek: bool):
    """What a read gives: the frames picked, or the error's message."""
    try:
        frames, _ = video_mod.read_video(path, 8, allow_seek=seek)
    except DataError as e:
        return str(e)
    return which_frames(frames, 300)[0]


@pytest.mark.parametrize("codec", ["mpeg4", "mjpeg"])
def test_a_damaged_avi_reads_the_same_seeking_or_in_order(tmp_path, codec):
    """2000 bytes overwritten a third of the way in: the avi demuxer resyncs after them and
    numbers the following frames on from the last good one, so the seeking reader used to
    return other frames ([18, 96, 104, ...]) while the in-order reader refused the file."""
    if not _has_encoder(codec):
        pytest.skip(f"PyAV has no {codec} encoder")
    full = _write_avi(tmp_path / "full.avi", flat_frames(300, 32, 48), codec)
    data = bytearray(full.read_bytes())
    third = len(data) // 3
    data[third : third + 2000] = b"\x5a" * 2000
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    seeking, in_order = _outcome(path, True), _outcome(path, False)
    assert seeking == in_order, "the seeking reader picked frames the in-order reader refuses or differ"
    # the intact file still seeks
    frames, info = video_mod.read_video(full, 8)
    assert info.method == "seek" and which_frames(frames, 300)[0] == sample_indices(300, 8)


def test_zero_frame_video(tmp_path):
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    _raises_naming(path, "empty|no decodable frames")


def test_empty_frame_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    _raises_naming(tmp_path / "frames", "no .jpg/.png")


def test_sample_errors_name_the_sample(tmp_path):
    sample = Sample(id="clip-7", question="?", video=str(tmp_path / "gone.mp4"))
    with pytest.raises(DataError, match="clip-7.*not found"):
        load_sample_frames(sample)
    with pytest.raises(DataError, match="clip-7"):
        load_sample_frames(Sample(id="clip-7", question="?"))


def test_sample_frames_and_bound(tmp_path):
    own = np.zeros((2, 4, 4, 3), np.uint8)
    assert load_sample_frames(Sample(id="a", question="?", frames=own)) is own
    path = write_video(tmp_path / "clip.mp4", flat_frames(90), fps=30, gop_size=10)
    sample = Sample(id="b", question="?", video=str(path), bound=(1.0, 2.0))
    got, _ = which_frames(load_sample_frames(sample, 4, cache=False), 90)
    assert got == [33, 41, 48, 55]


def test_a_window_past_the_video_end_fails_the_sample(tmp_path):
    """(50 s, 60 s) on a 3 s clip used to give its last frame num_frames times, silently."""
    path = write_video(tmp_path / "clip.mp4", flat_frames(90), fps=30, gop_size=10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(flat_frames(9)):
        Image.fromarray(f).save(folder / f"{i}.png")
    for video, length in ((path, "90 frames at 30 fps = 3.00s"), (folder, "9 frames at 3 fps = 3.00s")):
        sample = Sample(id="late", question="?", video=str(video), bound=(50.0, 60.0))
        with pytest.raises(DataError, match=rf"sample 'late'.*starts after the video ends \({length}\)"):
            load_sample_frames(sample, 4, cache=False)


# ----------------------------------------------------------------------------- cache


def count_decodes(monkeypatch) -> list[tuple]:
    """The calls that reach the decoder (``read_video``) from now on: one per cache miss."""
    calls: list[tuple] = []
    real = video_mod.read_video

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(video_mod, "read_video", spy)
    return calls


def test_cache_hits_and_is_invalidated_by_mtime(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.mp4", flat_frames(30), fps=30)
    first = load_frames(path, 4)
    cached = list(video_mod.cache_dir().glob("*.npy"))
    assert len(cached) == 1 and cached[0].parent == tmp_path / "frame-cache"

    calls = count_decodes(monkeypatch)
    np.testing.assert_array_equal(load_frames(path, 4), first)
    assert calls == [], "the second call should be served from the cache"

    load_frames(path, 4, policy="linspace")  # other settings: another entry
    assert len(calls) == 1

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    np.testing.assert_array_equal(load_frames(path, 4), first)
    assert len(calls) == 2, "a changed mtime must invalidate the cached frames"

    load_frames(path, 4, cache=False)
    assert len(calls) == 3


def test_frames_cached_by_another_decoder_version_are_decoded_again(tmp_path, monkeypatch):
    """The decoder's choice of frames changed between versions (variable-frame-rate windows,
    B-frame avi seeks): frames an earlier version cached must not be served by a later one."""
    path = write_video(tmp_path / "clip.mp4", flat_frames(30), fps=30)
    current = getattr(video_mod, "DECODER_VERSION", None)
    monkeypatch.setattr(video_mod, "DECODER_VERSION", -1, raising=False)
    fresh = load_frames(path, 4)
    (stale,) = video_mod.cache_dir().glob("*.npy")
    np.save(stale, np.zeros_like(fresh))  # what the earlier version decoded, say
    monkeypatch.setattr(video_mod, "DECODER_VERSION", current, raising=False)

    calls = count_decodes(monkeypatch)
    np.testing.assert_array_equal(load_frames(path, 4), fresh)
    assert len(calls) == 1, "an entry cached under another decoder version must be decoded again"
    np.testing.assert_array_equal(load_frames(path, 4), fresh)
    assert len(calls) == 1, "then served from the cache"


# ----------------------------------------------------------------------------- frame counts and order


def _write_av(path, frames, fps=30, codec="libx264", pts_ms=None, audio_s=None):
    """Encode ``frames`` with PyAV: optional per-frame timestamps (ms, a variable frame rate)
    and a silent audio track of ``audio_s`` seconds (aac, or opus in webm)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        elif codec.startswith("libvpx"):
            stream.options = {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        audio = None
        if audio_s:
            audio = out.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio is not None:
            ctx = audio.codec_context
            size, fmt = ctx.frame_size or 1024, ctx.format.name
            for t in range(0, int(audio_s * ctx.sample_rate), size):
                silence = np.zeros((1, size), np.float32 if fmt.endswith("p") else np.int16)
                chunk = av.AudioFrame.from_ndarray(silence, format=fmt, layout="mono")
                chunk.sample_rate, chunk.pts = ctx.sample_rate, t
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
    return path


@pytest.mark.parametrize(
    ("name", "codec", "audio_s"),
    [("clip.mkv", "libx264", 10.3), ("long-audio.mkv", "libx264", 20.0), ("clip.webm", "libvpx-vp9", 10.3)],
)
def test_a_longer_audio_track_does_not_change_the_video_frames(tmp_path, name, codec, audio_s):
    """mkv/webm declare one length for the whole file; the audio's must not count as video."""
    if not (_has_encoder(codec) and _has_encoder("aac" if name.endswith("mkv") else "libopus")):
        pytest.skip(f"PyAV lacks an encoder for {name}")
    path = _write_av(tmp_path / name, flat_frames(300, 32, 32), fps=30, codec=codec, audio_s=audio_s)
    for seek in (True, False):
        frames, info = video_mod.read_video(path, 8, allow_seek=seek)
        assert info.num_total == 300
        assert which_frames(frames, 300)[0] == sample_indices(300, 8), f"{name} seek={seek}"
    got, _ = which_frames(load_frames(path, 4, bound=(2.0, 6.0), cache=False), 300)
    assert got == sample_indices(300, 4, fps=30, bound=(2.0, 6.0))


def test_mpeg_program_stream(tmp_path):
    if not _has_encoder("mpeg2video"):
        pytest.skip("PyAV has no mpeg2video encoder")
    path = write_video(tmp_path / "clip.mpg", flat_frames(120, 32, 32), fps=25, codec="mpeg2video")
    frames, info = video_mod.read_video(path, 8)
    assert info.num_total == 120
    assert which_frames(frames, 120)[0] == sample_indices(120, 8)
    got, _ = which_frames(load_frames(path, 4, bound=(1.0, 3.0), cache=False), 120)
    assert got == sample_indices(120, 4, fps=25, bound=(1.0, 3.0))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate_picks_frames_by_position(tmp_path, ext):
    """50 frames at 100 fps then 50 at 10 fps: frame i is the i-th frame shown, whether the
    reader seeks or decodes in order (as decord's positional picks)."""
    pts = [i * 10 for i in range(50)] + [500 + i * 100 for i in range(50)]
    path = _write_av(tmp_path / f"vfr.{ext}", flat_frames(100, 32, 32), pts_ms=pts)
    seek, seek_info = video_mod.read_video(path, 8)
    seq, seq_info = video_mod.read_video(path, 8, allow_seek=False)
    assert seek_info.method == "seek" and seq_info.method == "sequential"
    assert seek_info.indices == seq_info.indices == sample_indices(100, 8)
    assert which_frames(seek, 100)[0] == which_frames(seq, 100)[0] == sample_indices(100, 8)
    np.testing.assert_array_equal(seek, seq)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_a_time_window_on_a_variable_frame_rate_video_follows_the_timestamps(tmp_path, ext):
    """50 frames at 100 fps then 50 at 10 fps (5.5 s): a window used to be turned into
    frames with the average rate (mp4: 18.2 fps, so 1-3 s meant frames 18-55; mkv declares
    30 fps), and a window past 3.3 s was refused as "after the video ends (... = 3.33s)".
    Its ends now go to the frames shown nearest them (1 s is frame 55, 3 s frame 75)."""
    pts = [i * 10 for i in range(50)] + [500 + i * 100 for i in range(50)]
    path = _write_av(tmp_path / f"vfr.{ext}", flat_frames(100, 32, 32), pts_ms=pts)
    for seek in (True, False):
        frames, info = video_mod.read_video(path, 4, bound=(1.0, 3.0), allow_seek=seek)
        assert info.indices == [57, 62, 67, 72], f"seek={seek}"
        assert which_frames(frames, 100)[0] == [57, 62, 67, 72], f"seek={seek}"
    got, _ = which_frames(load_frames(path, 2, bound=(4.0, 9.0), cache=False), 100)
    assert got == [88, 95]  # 4 s is frame 85; the end is clipped to the last frame, 99
    said = r"starts after the video ends \(100 frames at a variable frame rate = 5.50s\)"
    with pytest.raises(DataError, match=said):
        load_frames(path, 4, bound=(6.0, 7.0), cache=False)


def test_frame_folder_without_zero_padding_is_in_frame_order(tmp_path):
    """``ffmpeg -i x.mp4 %d.png`` names frames 1.png ... 24.png: 10.png comes after 9.png."""
    folder = tmp_path / "frames"
    folder.mkdir()
    pal = palette(24)
    for i in range(24):
        Image.fromarray(np.full((20, 30, 3), pal[i], np.uint8)).save(folder / f"{i + 1}.png")
    got, _ = which_frames(load_frames(folder, 8, cache=False), 24)
    assert got == sample_indices(24, 8) == [1, 4, 7, 10, 13, 15, 18, 21]


def test_hidden_files_in_a_frame_folder_are_not_frames(tmp_path):
    """A folder copied from a Mac holds ``._00001.jpg`` resource forks beside the frames:
    they used to count as frames (and fail to decode, or shift every pick)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    pal = palette(24)
    for i in range(24):
        Image.fromarray(np.full((20, 30, 3), pal[i], np.uint8)).save(folder / f"{i + 1:05d}.jpg")
        (folder / f"._{i + 1:05d}.jpg").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (folder / ".hidden.png").write_bytes(b"not an image")
    frames, info = video_mod.read_video(folder, 8)
    assert info.num_total == 24
    assert which_frames(frames, 24)[0] == sample_indices(24, 8)


def test_asking_for_more_frames_than_a_video_has_says_frames_repeat(tmp_path) -> None:
    """``probe(video="clip.mp4", num_frames=100)`` on a short clip used to repeat frames
    silently; the decode says so (for a file and a frame folder), and is silent when every
    frame asked for is a distinct one."""
    import warnings

    clip = tmp_path / "clip.mp4"
    write_video(clip, flat_frames(6), fps=4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(flat_frames(6)):
        Image.fromarray(f).save(folder / f"{i}.png")
    for path in (clip, folder):
        said = r"has 6 frames .*num_frames=10 repeats frames.*num_frames <= [56]"
        with pytest.warns(UserWarning, match=said):
            frames = load_frames(path, 10, cache=False)
        assert frames.shape[0] == 10
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert load_frames(path, 4, cache=False).shape[0] == 4


def test_frames_served_from_the_cache_say_they_repeat_too(tmp_path, monkeypatch) -> None:
    """The second load of a short clip comes from the frame cache; it used to skip the
    decode and with it the repeated-frames warning, so a second run said nothing. The
    cache keeps the distinct count beside the frames, and a hit says the same; a cache
    entry from before (frames only) is decoded again, to say it."""
    import warnings

    clip = tmp_path / "clip.mp4"
    write_video(clip, flat_frames(6), fps=4)
    said = r"has 6 frames .*num_frames=10 repeats frames.*num_frames <= [56]"
    with pytest.warns(UserWarning, match=said):
        first = load_frames(clip, 10)
    calls = []
    real = video_mod.read_video
    monkeypatch.setattr(video_mod, "read_video", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.warns(UserWarning, match=said):
        np.testing.assert_array_equal(load_frames(clip, 10), first)
    assert calls == [], "the second load should be served from the cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_frames(clip, 4)  # every frame distinct: nothing to say, from the decode or the cache
        load_frames(clip, 4)
    assert len(calls) == 1, "num_frames=4: decoded once, then from the cache"
    for counts in video_mod.cache_dir().glob("*.json"):
        counts.unlink()  # a cache written before the counts were kept
    with pytest.warns(UserWarning, match=said):
        np.testing.assert_array_equal(load_frames(clip, 10), first)
    assert len(calls) == 2


def _cut_with_stream_copy(src, dst, skip: int, total: int, fps: int) -> bool:
    """Rewrite ``src``'s mp4 edit list as ``ffmpeg -ss <skip/fps> -c copy`` does: the media
    starts ``skip`` frames in, past the keyframe, so the lead-in frames are decoded but hidden.
    Returns False when the file has no edit list to rewrite."""
    import struct

    b = bytearray(src.read_bytes())
    pos, mdhd = b.find(b"elst"), b.find(b"mdhd")
    if pos < 0 or mdhd < 0 or b[pos + 4] != 0 or b[mdhd + 4] != 0:
        return False
    duration, media_time = struct.unpack_from(">Ii", b, pos + 12)
    timescale = struct.unpack_from(">I", b, mdhd + 16)[0]
    shown = duration * (total - skip) // total
    struct.pack_into(">Ii", b, pos + 12, shown, media_time + timescale * skip // fps)
    dst.write_bytes(bytes(b))
    return True


@pytest.mark.parametrize("skip", [40, 10])
def test_mp4_cut_with_stream_copy_counts_only_the_frames_shown(tmp_path, skip):
    """An edit list that hides the first ``skip`` frames: the video is the frames shown (as
    ffmpeg and decord play it), not the declared count; it used to be refused as truncated
    or sampled over the wrong count (cut at 40 frames: [42, 77, ...] for [54, 86, ...])."""
    if not _has_encoder("libx264"):
        pytest.skip("PyAV has no libx264 encoder")
    full = _write_av(tmp_path / "full.mp4", flat_frames(300, 32, 32), fps=30)
    cut = tmp_path / "cut.mp4"
    if not _cut_with_stream_copy(full, cut, skip, 300, 30):
        pytest.skip("the encoder wrote no edit list")
    with av.open(str(cut)) as c:
        shown = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(shown) == 300 - skip
    expected = [skip + i for i in sample_indices(len(shown), 8)]
    for seek in (True, False):
        frames, info = video_mod.read_video(cut, 8, allow_seek=seek)
        assert info.num_total == 300 - skip, f"seek={seek}"
        assert which_frames(frames, 300)[0] == expected, f"seek={seek}"
    got, _ = which_frames(load_frames(cut, 4, bound=(1.0, 3.0), cache=False), 300)
    assert got == [skip + i for i in sample_indices(300 - skip, 4, fps=30, bound=(1.0, 3.0))]


def _shift_lead_in(src, dst, lead_in: int) -> None:
    """Remux ``src`` with every timestamp moved ``lead_in`` frames earlier, as
    ``ffmpeg -ss T -c copy`` leaves a cut: the muxer writes an edit list hiding the frames
    before 0, and the mov demuxer drops some of those hidden samples from its index."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        st = i.streams.video[0]
        out = o.add_stream_from_template(st)
        tick = int(1 / (st.average_rate * st.time_base))
        for p in i.demux(st):
            if p.dts is None:
                continue
            p.pts -= lead_in * tick
            p.dts -= lead_in * tick
            p.stream = out
            o.mux(p)


@pytest.mark.parametrize("ext", ["mp4", "mov"])
@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize(("lead_in", "expected"), [
    (10, [4, 14, 24, 34, 44, 53, 63, 73]),
    (12, [4, 14, 23, 33, 42, 52, 62, 71]),
])
def test_an_edit_list_hiding_lead_in_frames_is_not_truncated(tmp_path, ext, bframes, lead_in, expected):
    """A 90-frame clip whose edit list hides ``lead_in`` frames declares 90 frames while its
    index stores fewer (82): it was refused as "declares 90 frames but only 82 are stored";
    it is the 90 - lead_in frames shown, frame i being source frame lead_in + i."""
    if not _has_encoder("libx264"):
        pytest.skip("PyAV has no libx264 encoder")
    src = tmp_path / f"src.{ext}"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.options = {"crf": "10", "bf": str(bframes), "g": "12"}
        for arr in flat_frames(90, 32, 48):
            c.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        c.mux(s.encode(None))
    cut = tmp_path / f"cut.{ext}"
    _shift_lead_in(src, cut, lead_in)
    for seek in (True, False):
        frames, info = video_mod.read_video(cut, 8, allow_seek=seek)
        assert info.num_total == 90 - lead_in, f"seek={seek}"
        assert info.indices == expected, f"seek={seek}"
        assert which_frames(frames, 90)[0] == [lead_in + i for i in expected], f"seek={seek}"


@pytest.mark.parametrize(("ext", "cover_art"), [("mkv", False), ("mp4", True), ("mkv", True)])
def test_the_video_stream_is_not_a_thumbnail_or_cover_art(tmp_path, ext, cover_art):
    """A one-frame still (a thumbnail, or cover art with disposition attached_pic) stored as
    the first video stream used to be sampled: 8 copies of the still. The stream read is the
    one ffmpeg plays (av_find_best_stream)."""
    if not (_has_encoder("libx264") and _has_encoder("mjpeg")):
        pytest.skip("PyAV lacks libx264 or mjpeg")
    path = tmp_path / f"clip.{ext}"
    with av.open(str(path), "w") as out:
        still = out.add_stream("mjpeg", rate=1)
        still.width = still.height = 32
        still.pix_fmt = "yuvj420p"
        if cover_art:
            still.disposition = av.stream.Disposition.attached_pic
        video = out.add_stream("libx264", rate=30)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 255, np.uint8), format="rgb24")
        picture.pts = 0
        out.mux(still.encode(picture))
        out.mux(still.encode(None))
        for arr in flat_frames(90, 32, 32):
            out.mux(video.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(video.encode(None))
    for seek in (True, False):
        frames, info = video_mod.read_video(path, 8, allow_seek=seek)
        assert info.num_total == 90, f"seek={seek}"
        assert which_frames(frames, 90)[0] == sample_indices(90, 8), f"seek={seek}"


def test_a_rotated_video_is_returned_as_stored_and_says_so(tmp_path):
    """A phone video's display rotation (the tkhd matrix) is not applied: the frames are the
    stored ones, as documented in docs/datasets.md; it used to pass unremarked."""
    import struct
    import warnings

    if not _has_encoder("libx264"):
        pytest.skip("PyAV has no libx264 encoder")
    path = _write_av(tmp_path / "clip.mp4", flat_frames(30, 32, 64), fps=30)
    b = bytearray(path.read_bytes())
    pos = b.find(b"tkhd")
    if pos < 0 or b[pos + 4] != 0:
        pytest.skip("no version-0 tkhd box to patch")
    struct.pack_into(">9i", b, pos + 44, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)  # 90 degrees
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match=r"shown rotated by -?90 degrees; .*frames as stored"):
        frames = load_frames(rotated, 8, cache=False)
    assert frames.shape == (8, 32, 64, 3)
    assert which_frames(frames, 30)[0] == sample_indices(30, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_frames(path, 8, cache=False)
