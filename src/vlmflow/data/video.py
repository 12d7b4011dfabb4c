"""Frame sampling and video decoding: the one place vlmflow turns a video into pixels.

Decoding uses PyAV (imported lazily, inside functions, so importing vlmflow stays cheap).
Only the sampled frames are wanted, so :func:`load_frames` *seeks* to the keyframe before
each target and decodes forward from there instead of decoding the whole file; it falls
back to one sequential pass when the container cannot seek or its timestamps are
unreliable. Decoded frames are cached on disk as ``.npy`` keyed by the file's identity
(path, size, mtime) and the sampling settings, so a second run costs a file read; a
``.json`` beside each says how many distinct frames it holds (a hit warns of repeated
frames as the decode did).

Arrays returned here are ``(T, H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, VlmflowError

if TYPE_CHECKING:
    from ..sample import Sample

POLICIES = ("segment_middle", "linspace", "lvb")
"""Frame-sampling policies: PLLaVA segment midpoints, VideoLLaMA3 linspace with ends, or
LongVideoBench's start-aligned rule."""

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_FPS = 3.0
"""Frame rate assumed for frame folders (MVBench's ``frames_fps3`` folders)."""

DECODE_TIMEOUT_S = 300.0
"""Default bound on decoding one video (``$VLMFLOW_DECODE_TIMEOUT_S`` overrides it): a damaged
or pathological file becomes a per-sample failure instead of a hang."""
MAX_FRAME_PIXELS = 8192 * 8192
"""Default largest frame (width x height) decoded (``$VLMFLOW_MAX_FRAME_PIXELS``): a 64 Mpx
frame is far beyond any benchmark, and T of them would exhaust memory before the model ever
sees them (it resizes to a few hundred pixels anyway)."""

_NO_BOUND = (-1e5, 1e5)
# Animated images have no frame rate; MPEG program/transport streams get timestamps that
# the demuxer partly interpolates, so after a seek a frame can carry its neighbour's.
_NO_SEEK_FORMATS = {"gif", "apng", "webp_pipe", "image2", "image2pipe", "mpeg", "mpegts", "mpegvideo"}
# A declared frame count may overshoot the decodable frames by this much before we call
# the file truncated (container metadata is often off by a frame or two).
_COUNT_SLACK_FRAMES = 2
_COUNT_SLACK_FRACTION = 0.05
# Part of every frame-cache key: bump it whenever a change makes the decoder return other
# frames for the same file and settings, so that frames cached by an earlier version are
# decoded again rather than served. 2: variable-frame-rate time windows follow the
# timestamps; a B-frame avi seeks to the right frames; edit-list lead-in frames are hidden.
DECODER_VERSION = 2


# --------------------------------------------------------------------------- sampling


def sample_indices(
    num_total: int,
    num_frames: int,
    policy: str = "segment_middle",
    fps: float | None = None,
    bound: tuple[float, float] | None = None,
    times: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the ``num_frames`` frames to take from a video of ``num_total`` frames.

    ``segment_middle`` is PLLaVA's ``get_index`` (the paper's LLaVA/InternVL path): the
    window ``bound`` (seconds; the whole video when ``None``) is cut into ``num_frames``
    equal segments and the middle of each is taken. ``linspace`` is VideoLLaMA3's
    ``np.linspace(start, end, n, dtype=int)``, which includes the first and last frame.
    ``lvb`` is LongVideoBench's ``load_video(duration, max_num_frames)``: take
    ``k = min(num_frames, int(seconds))`` frames at ``int(total / k) * i`` from the window's
    start, where ``total = int(seconds * fps)`` frames (``seconds`` = ``end - start`` of the
    ``bound``, or the whole video's ``num_total / fps``), then repeat the last index up to
    ``num_frames``; it never takes the last frame and needs ``fps``. The LongVideoBench loader
    passes ``bound=(0, duration)`` with the annotation's duration, as the reference does.
    ``fps`` is only needed to turn a ``bound`` into frame indices. When the video has
    fewer frames than asked for, indices repeat; the result always has ``num_frames``
    entries in ``[0, num_total)``. A ``bound`` that is not finite, starts after it ends, or
    lies wholly outside the video raises :class:`DataError` (the reference's ``get_index``
    would index past the video there); one that only overhangs an end is clipped to the video.
    ``times`` (seconds of each frame from the first, for a variable-frame-rate video) maps
    the ``bound`` by the frames' timestamps instead of ``fps``: its ends go to the frames
    nearest them; ``fps`` is then still what ``lvb`` counts frames with.
    """
    if policy not in POLICIES:
        raise VlmflowError(f"unknown frame sampling policy {policy!r}; known: {', '.join(POLICIES)}")
    if num_total <= 0:
        raise DataError(f"cannot sample frames from a video with {num_total} frames")
    if num_frames <= 0:
        raise VlmflowError(f"num_frames must be positive, got {num_frames}")
    if bound is not None and fps is None:
        raise VlmflowError("sample_indices needs fps to apply a (start, end) bound in seconds")
    if policy == "lvb" and fps is None:
        raise VlmflowError("the lvb sampling policy needs fps (it counts whole seconds)")
    max_frame = num_total - 1
    start, end = bound if bound is not None else _NO_BOUND
    rate = float(fps) if fps is not None else 1.0
    if times is not None and len(times) != num_total:
        raise VlmflowError(f"sample_indices got {len(times)} frame times for {num_total} frames")
    if bound is not None:
        _check_window(float(start), float(end), num_total, rate, times)
    if bound is not None and times is not None:
        start_idx, end_idx = _nearest_frame(times, float(start)), _nearest_frame(times, float(end))
    else:
        # Python's round (half to even), as the reference code does.
        start_idx = max(0, round(start * rate))
        end_idx = min(round(end * rate), max_frame)
    start_idx = min(start_idx, end_idx)
    if policy == "segment_middle":
        seg = (end_idx - start_idx) / num_frames
        idx = [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(num_frames)]
    elif policy == "lvb":
        idx = _lvb_indices(num_total, num_frames, rate, bound, start_idx)
    else:
        idx = np.linspace(start_idx, end_idx, num_frames, dtype=int).tolist()
    return [min(max(int(i), 0), max_frame) for i in idx]


def _check_window(
    start: float, end: float, num_total: int, fps: float, times: Sequence[float] | None = None
) -> None:
    """Refuse a time window that selects no frame of a ``num_total``-frame video at ``fps``
    (or with frames at ``times``)."""
    if not (np.isfinite(start) and np.isfinite(end)):
        raise DataError(f"time window ({start}, {end}) is not finite seconds")
    if start > end:
        raise DataError(f"time window ({start:g}s, {end:g}s) starts after it ends")
    if times is not None:
        length = _length(times, fps)
        if start >= length:
            raise DataError(
                f"time window ({start:g}s, {end:g}s) starts after the video ends "
                f"({num_total} frames at a variable frame rate = {length:.2f}s)"
            )
    elif start * fps >= num_total:
        raise DataError(
            f"time window ({start:g}s, {end:g}s) starts after the video ends "
            f"({num_total} frames at {fps:g} fps = {num_total / fps:.2f}s)"
        )
    if end < 0:
        raise DataError(f"time window ({start:g}s, {end:g}s) ends before the video starts")


def _length(times: Sequence[float], fps: float) -> float:
    """Seconds of a video whose frames start at ``times``: the last one lasts as long as
    the step before it (``1 / fps`` for a single frame)."""
    last = float(times[-1])
    step = last - float(times[-2]) if len(times) > 1 else 1.0 / fps
    return last + step


def _nearest_frame(times: Sequence[float], t: float) -> int:
    """Index of the frame whose timestamp is nearest ``t`` (the earlier one on a tie)."""
    i = int(np.searchsorted(np.asarray(times, dtype=float), t))
    if i <= 0:
        return 0
    if i >= len(times):
        return len(times) - 1
    return i - 1 if t - float(times[i - 1]) <= float(times[i]) - t else i


def _lvb_indices(
    num_total: int, num_frames: int, fps: float, bound: tuple[float, float] | None, start_idx: int
) -> list[int]:
    """LongVideoBench's start-aligned indices (see :func:`sample_indices`), unclamped."""
    if bound is None:
        seconds, total = num_total / fps, num_total
    else:
        seconds = max(float(bound[1]) - max(float(bound[0]), 0.0), 0.0)
        total = int(seconds * fps)
    # The reference divides by int(seconds), which is 0 for a clip under a second: take one frame.
    count = max(1, min(num_frames, int(seconds)))
    step = int(total / count)
    idx = [start_idx + step * i for i in range(count)]
    return idx + [idx[-1]] * (num_frames - count)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Folder of the decoded-frame cache: ``$VLMFLOW_CACHE`` or ``~/.cache/vlmflow/frames``."""
    env = os.environ.get("VLMFLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vlmflow" / "frames"


def _identity(path: Path) -> list:
    """What makes a decoded result stale: the file's size and mtime (for a folder, its files)."""
    st = path.stat()
    if path.is_dir():
        files = _folder_images(path)
        latest = max((f.stat().st_mtime_ns for f in files), default=0)
        return [len(files), st.st_mtime_ns, latest]
    return [st.st_size, st.st_mtime_ns]


def _cache_path(path: Path, num_frames: int, policy: str, bound, folder_fps: float) -> Path:
    key = [
        DECODER_VERSION,
        str(path.resolve()),
        _identity(path),
        policy,
        num_frames,
        None if bound is None else [float(bound[0]), float(bound[1])],
        folder_fps if path.is_dir() else None,
    ]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:40]
    return cache_dir() / f"{digest}.npy"


def _cache_read(file: Path) -> np.ndarray | None:
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent or damaged: decode again
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        return None
    return arr


def _cache_write(file: Path, frames: np.ndarray) -> None:
    """Write atomically; a cache that cannot be written is not an error, just a miss."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, frames, allow_pickle=False)
        os.replace(tmp, file)
    except OSError:
        pass


def _counts_path(file: Path) -> Path:
    return file.with_suffix(".json")


def _cache_read_counts(file: Path) -> tuple[int, int] | None:
    """``(num_total, distinct)`` of a cached decode (``None``: absent or damaged, decode again)."""
    try:
        said = json.loads(_counts_path(file).read_text())
        return int(said["num_total"]), int(said["distinct"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _cache_write_counts(file: Path, info: DecodeInfo) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.json")
        tmp.write_text(json.dumps({"num_total": info.num_total, "distinct": len(set(info.indices))}))
        os.replace(tmp, _counts_path(file))
    except OSError:
        pass


# --------------------------------------------------------------------------- loading


@dataclass
class DecodeInfo:
    """How a video was read (for tests and diagnostics)."""

    method: str  # "seek", "sequential" or "folder"
    num_total: int  # frame count the indices were computed from
    fps: float
    indices: list[int]
    decoded: int  # frames the decoder produced


def load_frames(
    path: str | os.PathLike,
    num_frames: int = 8,
    policy: str = "segment_middle",
    bound: tuple[float, float] | None = None,
    cache: bool = True,
    *,
    folder_fps: float = FOLDER_FPS,
) -> np.ndarray:
    """Decode ``num_frames`` frames of a video file or frame folder: ``(T, H, W, 3)`` uint8 RGB.

    ``path`` is a video (mp4, mkv, webm, avi, mov, gif, ...) or a folder of ``.jpg``/``.png``
    frames in the order of the numbers in their names (``2.png`` before ``10.png``),
    played at ``folder_fps``. ``bound`` is an optional
    ``(start_s, end_s)`` window. A missing, unreadable, truncated or empty file raises
    :class:`DataError` naming the path. ``cache=False`` skips the on-disk frame cache.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"video not found: {p}")
    file = _cache_path(p, num_frames, policy, bound, folder_fps) if cache else None
    if file is not None:
        hit = _cache_read(file)
        counts = _cache_read_counts(file)
        if hit is not None and hit.shape[0] == num_frames and counts is not None:
            _warn_repeats(p, num_frames, *counts)  # as the decode that filled the cache did
            return hit
    frames, info = read_video(p, num_frames, policy, bound, folder_fps=folder_fps)
    if file is not None:
        _cache_write_counts(file, info)
        _cache_write(file, frames)
    return frames


def load_sample_frames(
    sample: Sample, num_frames: int = 8, policy: str = "segment_middle", cache: bool = True
) -> np.ndarray:
    """The frames of ``sample``: its own ``frames`` if set, else its ``video`` decoded.

    The sample's ``bound`` is applied. Failures raise :class:`DataError` naming the sample.
    """
    if sample.error is not None:
        raise DataError(sample.error)
    if sample.frames is not None:
        return sample.frames
    if not sample.video:
        raise DataError(f"sample {sample.id!r} has neither frames nor a video path")
    try:
        return load_frames(sample.video, num_frames, policy, sample.bound, cache)
    except DataError as e:
        raise DataError(f"sample {sample.id!r}: {e}") from e


def read_video(
    path: str | os.PathLike,
    num_frames: int = 8,
    policy: str = "segment_middle",
    bound: tuple[float, float] | None = None,
    *,
    folder_fps: float = FOLDER_FPS,
    allow_seek: bool = True,
) -> tuple[np.ndarray, DecodeInfo]:
    """Uncached decode returning the frames and a :class:`DecodeInfo` saying how."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"video not found: {p}")
    limit = float(os.environ.get("VLMFLOW_DECODE_TIMEOUT_S", DECODE_TIMEOUT_S))
    _deadline.end, _deadline.limit = time.monotonic() + limit, limit
    try:
        if p.is_dir():
            return _said_repeats(p, num_frames, *_read_folder(p, num_frames, policy, bound, folder_fps))
        if p.stat().st_size == 0:
            raise DataError(f"video {p} is empty (0 bytes)")
        import av

        try:
            return _said_repeats(p, num_frames, *_read_container(p, num_frames, policy, bound, allow_seek))
        except DataError:
            raise
        except av.error.EOFError as e:
            raise DataError(f"video {p} is empty: it ends before its first frame ({_one_line(e)})") from e
        except (av.error.FFmpegError, OSError, ValueError, StopIteration, RuntimeError, MemoryError) as e:
            raise DataError(f"cannot decode video {p}: {_one_line(e)}") from e
    finally:
        _deadline.end = None


def _said_repeats(
    path: Path, num_frames: int, frames: np.ndarray, info: DecodeInfo
) -> tuple[np.ndarray, DecodeInfo]:
    """The decode's result, after :func:`_warn_repeats` on it."""
    _warn_repeats(path, num_frames, info.num_total, len(set(info.indices)), stacklevel=4)
    return frames, info


def _warn_repeats(path: Path, num_frames: int, num_total: int, distinct: int, stacklevel: int = 3) -> None:
    """Say when ``num_frames`` asks for more frames than the video (or its time window)
    has: the sampled indices repeat, so the model sees the same frame several times."""
    if distinct < num_frames:
        warnings.warn(
            f"video {str(path)!r} has {num_total} frames ({distinct} distinct in the sampled "
            f"window); num_frames={num_frames} repeats frames, so the input holds "
            f"{num_frames - distinct} repeated frames (use num_frames <= {distinct} for each "
            "frame once)",
            UserWarning,
            stacklevel=stacklevel,
        )


_deadline = threading.local()  # when the decode under way in this thread must give up


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check_deadline(path: Path) -> None:
    """Raise once the decode of ``path`` has run past ``$VLMFLOW_DECODE_TIMEOUT_S``."""
    end = getattr(_deadline, "end", None)
    if end is not None and time.monotonic() > end:
        raise DataError(
            f"decoding {path} took more than {_deadline.limit:g}s (VLMFLOW_DECODE_TIMEOUT_S): "
            "the file is damaged or far too long; gave up"
        )


def _check_size(width: int, height: int, path: Path) -> None:
    """Refuse frames above ``$VLMFLOW_MAX_FRAME_PIXELS`` before decoding any of them."""
    limit = int(os.environ.get("VLMFLOW_MAX_FRAME_PIXELS", MAX_FRAME_PIXELS))
    if width * height > limit:
        raise DataError(
            f"{path} has {width}x{height} frames ({width * height / 1e6:.0f} Mpx), above the "
            f"{limit / 1e6:.0f} Mpx limit (VLMFLOW_MAX_FRAME_PIXELS); downscale it or raise the limit"
        )


def _decode(container, stream, path: Path):
    """``container.decode(stream)``, checking the decode deadline at every frame."""
    first = True
    for frame in container.decode(stream):
        _check_deadline(path)
        if first:
            first = False
            _warn_rotation(frame, path)
        yield frame


def _warn_rotation(frame, path: Path) -> None:
    """Say when a video carries a display rotation (a phone video): frames are returned as
    stored, not turned upright, so the model sees them on their side."""
    try:
        degrees = round(float(getattr(frame, "rotation", 0) or 0))
    except (TypeError, ValueError):
        return
    if degrees % 360:
        warnings.warn(
            f"video {str(path)!r} asks to be shown rotated by {degrees} degrees; vlmflow returns "
            "its frames as stored (not rotated)",
            UserWarning,
            stacklevel=2,
        )


def _folder_images(folder: Path) -> list[Path]:
    """The folder's frame images in frame order: ``2.png`` before ``10.png``. Hidden files
    (macOS ``._00001.jpg`` resource forks, ``.DS_Store``) are not frames."""
    files = (
        f
        for f in folder.iterdir()
        if not f.name.startswith(".") and f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )
    return sorted(files, key=_natural_key)


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    """Sort key comparing the runs of digits in a file name as numbers."""
    parts = re.split(r"(\d+)", path.name)
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts if p]


def _read_folder(folder, num_frames, policy, bound, fps) -> tuple[np.ndarray, DecodeInfo]:
    from PIL import Image

    files = _folder_images(folder)
    if not files:
        raise DataError(f"frame folder {folder} holds no .jpg/.png images")
    indices = sample_indices(len(files), num_frames, policy, fps, bound)
    loaded: dict[int, np.ndarray] = {}
    for i in sorted(set(indices)):
        _check_deadline(folder)
        try:
            with Image.open(files[i]) as im:
                _check_size(im.width, im.height, files[i])
                loaded[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError, ...
            raise DataError(f"cannot read frame image {files[i]}: {_one_line(e)}") from e
    shapes = {a.shape for a in loaded.values()}
    if len(shapes) > 1:
        raise DataError(f"frame folder {folder} mixes image sizes {sorted(shapes)}")
    frames = np.stack([loaded[i] for i in indices])
    return frames, DecodeInfo("folder", len(files), fps, indices, len(loaded))


class _SeekFailed(Exception):
    """The seeking reader cannot be trusted for this file; read sequentially instead."""


def _read_container(path, num_frames, policy, bound, allow_seek):
    import av

    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        index = stream.index  # read now: the stream is gone once the container closes
        if stream.codec_context is None:  # its codec parameters are cut off or damaged
            raise DataError(f"cannot decode {path}: its video stream has no usable codec parameters")
        stream.thread_type = "AUTO"
        _check_size(stream.codec_context.width or 0, stream.codec_context.height or 0, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        timeline = None
        times = None  # seconds of each frame, for a variable frame rate
        declared = bool(stream.frames and stream.frames > 0)
        seekable = container.format.name not in _NO_SEEK_FORMATS
        if declared and _constant_rate_index(stream):
            total: int | None = int(stream.frames)
            if seekable and allow_seek and container.format.name == "avi":
                seekable = _avi_demuxes_as_indexed(path, stream)
        else:
            # No frame count, or one whose timestamps are not evenly spaced (variable frame
            # rate): read the packets' timestamps, so that frame i is the i-th frame shown.
            timeline = _scan_packets(path, stream.index)
            if declared and container.format.name == "avi":
                _check_stored(path, int(stream.frames), timeline)
            total, declared = (len(timeline.pts) or None), False
            if not timeline.exact:
                timeline = None
            elif stream.time_base:
                times = _variable_times(timeline.pts, Fraction(stream.time_base))
        if total is not None and allow_seek and seekable and stream.time_base and fps > 0:
            indices = sample_indices(total, num_frames, policy, fps, bound, times)
            try:
                got, decoded = _seek_decode(container, stream, indices, Fraction(rate), path, timeline)
            except (_SeekFailed, av.error.FFmpegError):
                got = None
            if got is not None:
                frames = np.stack([got[i] for i in indices])
                return frames, DecodeInfo("seek", total, fps, indices, decoded)
    return _sequential(path, num_frames, policy, bound, total, declared, fps, index, times)


_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: cover art, not a video


def _video_stream(container, path: Path):
    """The video stream ffmpeg plays (``av_find_best_stream``): never cover art (an attached
    picture), and one with several frames before a one-frame still such as a thumbnail;
    ties go to the most frames, then the largest picture."""
    videos = [s for s in container.streams.video if not int(s.disposition or 0) & _ATTACHED_PIC]
    if not container.streams.video:
        raise DataError(f"no video stream in {path}")
    if not videos:
        raise DataError(f"no video stream in {path}: its only picture is cover art (an attached picture)")
    try:
        best = container.streams.best("video")
    except Exception:  # noqa: BLE001 - an older PyAV without StreamContainer.best
        best = None
    if best is not None and any(s.index == best.index for s in videos):
        return best
    return max(videos, key=lambda s: (s.frames or 0, (s.width or 0) * (s.height or 0)))


def _constant_rate_index(stream) -> bool:
    """Whether the container's index lists every frame at evenly spaced timestamps (a
    constant-rate mp4/mov/avi), so frame ``i`` sits at ``start + i / rate``."""
    entries = getattr(stream, "index_entries", None) or ()
    if not stream.frames or len(entries) < stream.frames:
        return False
    if any(getattr(e, "is_discard", False) for e in entries):
        # An edit list (``ffmpeg -ss T -c copy``) hides lead-in frames: the declared count
        # includes frames never shown, so count the shown ones from the packets instead.
        return False
    try:
        stamps = np.sort(np.fromiter((e.timestamp for e in entries), dtype=np.int64, count=len(entries)))
    except (AttributeError, TypeError):
        return False
    steps = np.diff(stamps)
    if len(steps) == 0:
        return True
    # Timestamps are rounded to the time base: allow one tick (or 1%) of jitter.
    return bool(steps.max() - steps.min() <= max(1, int(0.01 * np.median(steps))))


@dataclass
class _Timeline:
    """The video stream's frames as stored: presentation timestamps in display order and
    the positions of the keyframes. ``exact`` is false when some packet has no timestamp
    (then only the count is known)."""

    pts: list[int]
    keys: list[int]
    exact: bool
    stored: int = 0  # frames in the file: hidden lead-in and dropped (avi) ones included


def _scan_packets(path: Path, index: int) -> _Timeline:
    """Demux (without decoding) every packet of video stream ``index``.

    Only frames that are shown count: a packet the demuxer marks as discarded, or one
    stamped before the stream's start (the lead-in an edit list hides, as in an mp4 cut with
    ``ffmpeg -ss T -c copy``), decodes only as a reference and never comes out of the decoder.
    Matroska declares its length only for the whole file, audio included, so a file whose
    packets end well before that declared length is truncated; that is checked here.
    """
    import av

    stamps: list[int] = []
    key_stamps: list[int] = []
    exact = True
    count = 0
    stored = 0
    low, high = float("inf"), float("-inf")  # the first and last decode timestamps
    end = 0.0  # seconds: where the last packet of any stream ends
    with av.open(str(path)) as container:
        video = container.streams[index]
        first = video.start_time
        try:
            for packet in container.demux():
                _check_deadline(path)
                if packet.size == 0:
                    continue
                tb = packet.time_base
                if packet.pts is not None and tb:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * tb))
                if packet.stream.index != video.index:
                    continue
                stored += 1
                if packet.dts is not None:
                    low, high = min(low, packet.dts), max(high, packet.dts)
                if getattr(packet, "is_discard", False) or (
                    first is not None and packet.pts is not None and packet.pts < first
                ):
                    continue  # a hidden lead-in frame: decoded as a reference, never shown
                count += 1
                if packet.pts is None:
                    exact = False
                    continue
                stamps.append(int(packet.pts))
                if packet.is_keyframe:
                    key_stamps.append(int(packet.pts))
        except av.error.FFmpegError:
            pass  # a damaged tail: the packets read so far are what the file holds
        declared = container.duration / 1_000_000 if container.duration else 0.0
        if "matroska" in container.format.name and declared > 0 and count:
            rate = video.average_rate or video.guessed_rate
            slack = max(_COUNT_SLACK_FRACTION * declared, _COUNT_SLACK_FRAMES / float(rate) if rate else 0.1)
            if end < declared - slack:
                raise DataError(
                    f"video {path} is truncated: it declares {declared:.2f}s but its packets "
                    f"end at {end:.2f}s"
                )
        # Frames the timestamps span: an avi's dropped frames (empty chunks, which the demuxer
        # skips) count in its declared length, and are not missing from the file.
        rate = video.average_rate or video.guessed_rate
        if rate and video.time_base and high >= low:
            stored = max(stored, round(float((high - low) * video.time_base * rate)) + 1)
    if not exact or len(set(stamps)) != len(stamps):
        return _Timeline([0] * count, [], False, stored)
    stamps.sort()
    position = {p: i for i, p in enumerate(stamps)}
    return _Timeline(stamps, sorted(position[p] for p in key_stamps), True, stored)


def _variable_times(pts: list[int], time_base: Fraction) -> list[float] | None:
    """Seconds of each frame from the first, when the timestamps ``pts`` (in display
    order) are not evenly spaced (a variable frame rate); ``None`` when they are, so a
    constant-rate video maps time windows with its frame rate, as the reference does."""
    if len(pts) < 3:
        return None
    stamps = np.asarray(pts, dtype=np.int64)
    steps = np.diff(stamps)
    # Timestamps are rounded to the time base: allow one tick (or 1%) of jitter.
    if steps.max() - steps.min() <= max(1, int(0.01 * np.median(steps))):
        return None
    return [float((int(p) - int(stamps[0])) * time_base) for p in stamps]


def _count_slack(total: int) -> int:
    """How many frames a declared count of ``total`` may overshoot the stored frames by."""
    return max(_COUNT_SLACK_FRAMES, int(_COUNT_SLACK_FRACTION * total))


def _avi_demuxes_as_indexed(path: Path, stream) -> bool:
    """Whether reading the avi in order yields the frames its index lists.

    After damaged bytes the avi demuxer resyncs on the next chunk and numbers the frames
    that follow consecutively, so in-order timestamps stop matching the index a seek uses:
    a seeking read would then pick other frames than an in-order one. Such a file is read
    in order (which counts its frames against the declared count). Costs one demux pass,
    no decoding."""
    entries = [e for e in stream.index_entries if getattr(e, "size", 1) > 0]
    scan = _scan_packets(path, stream.index)
    if len(scan.pts) != len(entries):
        return False
    return not scan.exact or scan.pts == sorted(int(e.timestamp) for e in entries)


def _check_stored(path: Path, declared: int, timeline: _Timeline) -> None:
    """Refuse a file that stores fewer frames than its header declares: an avi cut short
    loses its index (at the end of the file) with its tail, so nothing else notices.

    Only for an avi: an mp4/mov whose edit list hides lead-in frames (``ffmpeg -ss T -c copy``)
    legitimately stores fewer frames than it declares, as the mov demuxer drops hidden
    samples from its index; an mp4/mov/mkv cut short is caught by its own container."""
    if declared > 0 and timeline.stored < declared - _count_slack(declared):
        raise DataError(
            f"video {path} is truncated: it declares {declared} frames but only "
            f"{timeline.stored} are stored"
        )


def _seek_decode(container, stream, indices, rate: Fraction, path: Path, timeline: _Timeline | None = None):
    """Decode the frames at ``indices`` by seeking to the keyframe before each target.

    Frame ``i`` is the ``i``-th frame in display order: its timestamp comes from
    ``timeline`` when given (any frame rate), else from the constant ``rate``. Returns
    ``({index: frame}, decoded)`` or ``(None, decoded)`` when the stream ends before a
    target (the sequential reader then decides between a short and a truncated file).
    Raises :class:`_SeekFailed` when timestamps are missing or a seek overshoots.
    """
    tb = Fraction(stream.time_base)
    start = stream.start_time or 0

    if timeline is not None:
        position = {p: i for i, p in enumerate(timeline.pts)}

        def pts_of(i: int) -> int:
            return timeline.pts[i]

        def index_of(frame) -> int:
            if frame.pts not in position:
                raise _SeekFailed(f"frame at pts {frame.pts} is not among the stream's packets")
            return position[frame.pts]

        keyframes = timeline.keys or None
    else:

        def pts_of(i: int) -> int:
            return start + int(Fraction(i) / rate / tb)

        def index_of(frame) -> int:
            if frame.pts is None:
                raise _SeekFailed("frame without timestamp")
            return round((frame.pts - start) * tb * rate)

        keyframes = _keyframe_indices(stream, index_of_pts=lambda p: round((p - start) * tb * rate))
    targets = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    frames = None
    pos = -1  # index of the last decoded frame
    decoded = 0
    # Without an index, seek only past this distance; grown when a seek lands behind `pos`.
    gap = 8
    for t in targets:
        if t in got:
            continue
        if keyframes is not None:
            before = [k for k in keyframes if k <= t]
            key = before[-1] if before else 0
            need_seek = frames is None and key > 0 or frames is not None and key > pos
        else:
            need_seek = (frames is None and t > gap) or (frames is not None and t - pos > gap)
        just_seeked = False
        if need_seek:
            container.seek(pts_of(t), stream=stream, backward=True, any_frame=False)
            frames = _decode(container, stream, path)
            just_seeked = True
        elif frames is None:
            frames = _decode(container, stream, path)
        while True:
            frame = next(frames, None)
            if frame is None:
                return None, decoded
            decoded += 1
            idx = index_of(frame)
            if just_seeked:
                just_seeked = False
                if idx > t:
                    raise _SeekFailed(f"seek for frame {t} landed on {idx}")
                if idx <= pos:
                    gap = max(gap, t - idx)
            pos = idx
            if idx >= t:
                arr = frame.to_ndarray(format="rgb24")
                for u in targets:
                    if u >= t and u <= idx and u not in got:
                        got[u] = arr
                break
    return got, decoded


def _keyframe_indices(stream, index_of_pts) -> list[int] | None:
    """Frame indices of the keyframes the container's index lists, or ``None`` if it has none."""
    entries = list(getattr(stream, "index_entries", None) or ())
    try:
        keys = sorted(index_of_pts(e.timestamp) for e in entries if e.is_keyframe)
    except (AttributeError, TypeError):
        return None
    # Matroska loads its cues lazily, so an index with one keyframe may just be incomplete;
    # trust it only when it has several keyframes or one entry per frame (mp4).
    complete = stream.frames and len(entries) >= stream.frames
    return keys if keys and (len(keys) > 1 or complete) else None


def _sequential(path, num_frames, policy, bound, total, declared, fps, index, times=None):
    """One pass from the start of stream ``index``, keeping only the sampled frames (two
    when the count is unknown)."""
    import av

    if total is None:
        total = _count_by_decoding(path, index)
        declared = False
        if total == 0:
            raise DataError(f"video {path} has no decodable frames")
    if bound is not None and fps <= 0:
        raise DataError(f"video {path} has no frame rate, so a time bound cannot be applied")
    indices = sample_indices(total, num_frames, policy, fps if fps > 0 else None, bound, times)
    wanted = set(indices)
    last_needed = max(indices)
    got: dict[int, np.ndarray] = {}
    n = 0
    last = None
    with av.open(str(path)) as container:
        stream = container.streams[index]
        stream.thread_type = "AUTO"
        for frame in _decode(container, stream, path):
            if n in wanted:
                got[n] = frame.to_ndarray(format="rgb24")
            last = frame
            n += 1
            if n > last_needed:
                break
    if n == 0:
        raise DataError(f"video {path} has no decodable frames")
    if n <= last_needed:
        if declared and n < total - _count_slack(total):
            raise DataError(f"video {path} is truncated: it declares {total} frames but only {n} decode")
        tail = last.to_ndarray(format="rgb24")
        for i in indices:
            got.setdefault(i, tail)
    frames = np.stack([got[i] for i in indices])
    return frames, DecodeInfo("sequential", total, fps, indices, n)


def _count_by_decoding(path, index: int) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams[index]
        stream.thread_type = "AUTO"
        return sum(1 for _ in _decode(container, stream, path))


# --------------------------------------------------------------------------- writing


def _pick_codec(suffix: str) -> str:
    import av

    prefs = {
        ".webm": ("libvpx-vp9", "libvpx", "vp9", "vp8"),
        ".avi": ("mpeg4", "mjpeg"),
        ".gif": ("gif",),
    }.get(suffix, ("libx264", "h264", "mpeg4"))
    for name in prefs:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several types for "no such encoder"
            continue
    raise DataError(f"no encoder available for {suffix} (tried {', '.join(prefs)})")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 8,
    codec: str | None = None,
    *,
    gop_size: int | None = None,
) -> Path:
    """Encode ``frames`` ``(T, H, W, 3)`` uint8 RGB into a video file with PyAV.

    The codec follows the extension unless given: mp4/mkv/mov -> h264 (or mpeg4), webm ->
    vp9 (or vp8), avi -> mpeg4, gif -> gif. Frames are stored as yuv420p (mjpeg: yuvj420p)
    at high quality; odd heights/widths are padded by one edge pixel because 4:2:0 needs
    even sizes.
    ``gop_size`` sets the keyframe interval (small values make seeking cheap).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise DataError(f"write_video needs (T, H, W, 3) frames with T > 0, got {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    name = codec or _pick_codec(suffix)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(p), mode="w") as out:
        stream = out.add_stream(name, rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        if name == "gif":
            stream.pix_fmt = "rgb8"
        else:
            # The mjpeg encoder takes only full-range (JPEG) yuvj420p.
            stream.pix_fmt = "yuvj420p" if name == "mjpeg" else "yuv420p"
            if name in ("libx264", "h264"):
                stream.options = {"crf": "10", "preset": "veryfast"}
            elif name in ("mpeg4", "mjpeg"):
                stream.codec_context.qscale = True  # fixed quantiser instead of bitrate
                stream.codec_context.global_quality = 2 * 118  # FF_QP2LAMBDA * q
            elif name.startswith("libvpx") or name in ("vp8", "vp9"):
                stream.options = {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"}
                stream.bit_rate = 0 if name != "libvpx" else 8_000_000
        if gop_size:
            stream.codec_context.gop_size = int(gop_size)
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return p
