"""Decode speed: 8 sampled frames by seeking against one sequential pass, on a long video.

What it measures. vlmflow needs only the sampled frames of a video (8 by default), so
:func:`vlmflow.data.load_frames` seeks to the keyframe before each target and decodes
forward from there. This benchmark times, side by side in one run and on the same file:

* **seek** - ``load_frames(path, 8, cache=False)``, the path every loader uses (the frame
  cache is off, so the file is really decoded each time);
* **sequential** - ``read_video(path, 8, allow_seek=False)``, one pass from the first frame
  up to the last sampled one (for segment midpoints that is ~94% of the file): what a
  reader without seeking costs, and the fallback for files that cannot seek.

It prints ``decode 8 of N frames: seek <s>s sequential <s>s speedup <x>x frames_decoded <k>``
(``k``: frames the seeking reader decoded, from its ``DecodeInfo``), then the sequential
reader's count, and checks that both ways return identical pixels.

The fixture. A 10-minute, 30 fps, 64x48 H.264 mp4 with a keyframe every 2 s (18,000
frames), a textured pattern that moves every frame so frames are not trivially
compressible. It is encoded once with PyAV (about 5-10 s on 2 cores) into
``$TMPDIR/vlmflow-bench/`` (``--fixture-dir``) and reused by later runs. ``--quick`` uses a
20-second fixture instead (600 frames), for a smoke test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

if importlib.util.find_spec("vlmflow") is None:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from vlmflow.data import load_frames
from vlmflow.data.video import read_video


def fixture_path(folder: Path, frames: int, fps: int, width: int, height: int, gop: int, ext: str) -> Path:
    return folder / f"decode_speed_{frames}f_{fps}fps_{width}x{height}_gop{gop}.{ext}"


def write_fixture(path: Path, frames: int, fps: int, width: int, height: int, gop: int) -> float:
    """Encode the fixture frame by frame (no (T, H, W, 3) array of the whole video in memory).

    Writes to a temporary name and renames, so an interrupted run never leaves a short file
    that a later run would reuse. Returns the seconds it took.
    """
    import av

    rng = np.random.default_rng(0)
    # A smooth texture twice the frame's width, scrolled one pixel per frame, plus a colour
    # that drifts over time: every frame differs, and a frame's index can be read back.
    texture = rng.integers(0, 256, (height // 4 + 1, width // 2 + 1, 3)).astype(np.uint8)
    texture = np.kron(texture, np.ones((4, 4, 1), np.uint8))[:height, : 2 * width]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    start = time.perf_counter()
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        stream.codec_context.gop_size = gop
        for i in range(frames):
            shift = i % width
            img = texture[:, shift : shift + width].copy()
            img[: height // 4] = (i * 7 % 256, i // 30 % 256, 255 - i % 256)  # per-frame stripe
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    os.replace(tmp, path)
    return time.perf_counter() - start


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls of ``fn`` and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 20-second fixture instead of 10 minutes")
    p.add_argument("--seconds", type=float, default=None, help="fixture length (default 600, quick 20)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of the fixture")
    p.add_argument("--gop-seconds", type=float, default=2.0, help="keyframe interval")
    p.add_argument("--container", default="mp4", choices=["mp4", "mkv", "mov"])
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--policy", default="segment_middle")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per way (default 5, quick 2)")
    p.add_argument("--fixture-dir", type=Path, default=Path(tempfile.gettempdir()) / "vlmflow-bench")
    args = p.parse_args(argv)

    seconds = args.seconds if args.seconds is not None else (20.0 if args.quick else 600.0)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    width, height = (int(v) for v in args.size.lower().split("x"))
    total = round(seconds * args.fps)
    gop = max(1, round(args.gop_seconds * args.fps))
    path = fixture_path(args.fixture_dir, total, args.fps, width, height, gop, args.container)
    if path.exists():
        print(f"fixture {path} (reused)")
    else:
        took = write_fixture(path, total, args.fps, width, height, gop)
        print(f"fixture {path}: {total} frames encoded in {took:.1f}s")

    n = args.num_frames
    # one untimed call of each, so both ways start with the file in the page cache
    seek_frames, seek_info = read_video(path, n, args.policy, allow_seek=True)
    seq_frames, seq_info = read_video(path, n, args.policy, allow_seek=False)
    if seek_info.method != "seek":
        print(f"warning: the seeking reader fell back to {seek_info.method!r} for {path}")
    if not np.array_equal(seek_frames, seq_frames):
        raise SystemExit("seek and sequential decoding returned different pixels")

    t_seek, _ = timed(lambda: load_frames(path, n, args.policy, cache=False), repeat)
    t_seq, _ = timed(lambda: read_video(path, n, args.policy, allow_seek=False), repeat)
    speedup = t_seq / t_seek if t_seek > 0 else float("inf")
    print(
        f"decode {n} of {seek_info.num_total} frames: seek {t_seek:.4f}s sequential {t_seq:.4f}s "
        f"speedup {speedup:.1f}x frames_decoded {seek_info.decoded}"
    )
    print(
        f"  sequential frames_decoded {seq_info.decoded}; indices {seek_info.indices}; "
        f"median of {repeat} calls each; identical pixels: yes"
    )
    return {
        "num_total": seek_info.num_total,
        "seek_s": t_seek,
        "sequential_s": t_seq,
        "speedup": speedup,
        "seek_decoded": seek_info.decoded,
        "sequential_decoded": seq_info.decoded,
    }


if __name__ == "__main__":
    main()
