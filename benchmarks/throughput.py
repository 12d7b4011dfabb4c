"""Throughput: samples/s of a knockout run with 1 and with 2 processes, side by side.

What it measures. The same ``vlmflow flow`` job (``--model`` on ``synthetic:N``, the
``--target`` sweeps) is run once per process count into a fresh run folder: one process as
``python -m vlmflow``, several under ``torchrun --standalone --nproc_per_node P`` (the
samples are dealt round-robin, each rank writes its shard, rank 0 merges). For each it
reports

* **loop samples/s**: samples analysed / the slowest rank's sample-loop seconds (from the
  run's ``manifest.json``), the steady-state rate that decides long runs;
* **end-to-end samples/s**: samples / wall seconds of the whole command, including the
  interpreter and model start-up of every process and rank 0's merge and report;

and the speedup of each over the first run. Runs are ``PxT`` (P processes of T intra-op
threads each, ``OMP_NUM_THREADS=T``). The default compares, on a machine of C cores:
``1x1`` (the reference), ``1xC`` (one process using every core through intra-op threads)
and ``2x(C/2)`` (two processes sharing the cores): the last two have the same CPU budget
split differently. Tiny models have too little work per op for intra-op threads to pay
off, and on a busy machine OpenMP threads that wait for each other can be far slower
than one thread; that is what ``1xC`` against ``1x1`` shows.

The model. ``--model tiny`` (default) is the 8-layer test model that ships in the package
(``vlmflow.models.TINY_MODEL_DIR``), with ``--window 3``; the figures in
``benchmarks/README.md`` are of it. ``--model demo`` is the embedded 30-layer SmolLM2 demo
model (window 9 by default); any local checkpoint folder works too.

Run ``python benchmarks/throughput.py`` (``--samples 4 --runs 1x1 2x1`` to change the
size and the runs; ``--json`` prints the results as JSON too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_once(model: str, procs: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One ``vlmflow flow`` run with ``procs`` processes; its timings and counts."""
    cli = ["flow", "--model", model, "--data", f"synthetic:{args.samples}", "--out", str(out), "--quiet"]
    cli += ["--num-frames", str(args.num_frames), "--window", str(args.window), "--sample-mode", "all"]
    cli += [a for t in args.target for a in ("-t", t)] + [a for t in args.task for a in ("--task", t)]
    if procs == 1:
        cmd = [sys.executable, "-m", "vlmflow", *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        cmd += ["-m", "vlmflow", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{procs}-process run failed:\n{done.stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    session = manifest["sessions"][-1]
    n = session["done"] + session["failed"]
    loop = max(r["seconds"] for r in session["ranks"])
    return {
        "procs": procs,
        "threads_per_proc": threads,
        "samples": n,
        "loop_s": loop,
        "wall_s": wall,
        "loop_samples_per_s": n / loop if loop else float("nan"),
        "end_to_end_samples_per_s": n / wall,
        "rank_loop_s": [r["seconds"] for r in session["ranks"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (default), 'demo' or a checkpoint folder")
    parser.add_argument("--samples", type=int, default=8, help="synthetic samples per task")
    parser.add_argument(
        "--task", action="append", default=[], help="synthetic task (repeatable; default all)"
    )
    parser.add_argument(
        "--target", action="append", default=None, help="knockout target (default cross-frame)"
    )
    parser.add_argument("--runs", nargs="+", default=None, help="PxT runs (default: 1x1 1xC 2x(C/2))")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--window", type=int, default=None, help="default: 3 for tiny, 9 otherwise")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    args.target = args.target or ["cross-frame"]
    args.window = args.window or (3 if args.model == "tiny" else 9)
    cores = os.cpu_count() or 1
    default = ["1x1"] + ([f"1x{cores}"] if cores > 1 else []) + [f"2x{max(1, cores // 2)}"]
    runs = [tuple(int(v) for v in r.lower().split("x")) for r in args.runs or default]

    with tempfile.TemporaryDirectory(prefix="vlmflow-throughput-") as tmp:
        work = Path(tmp)
        model = args.model
        print(f"model: {model}")
        tasks = ", ".join(args.task) if args.task else "all tasks"
        print(
            f"job: flow -t {' -t '.join(args.target)} --window {args.window} on synthetic:{args.samples} "
            f"({tasks}), {args.num_frames} frames; {cores} CPU cores; "
            f"load average {os.getloadavg()[0]:.1f} at start"
        )
        results = [run_once(model, p, t, args, work / f"run-{p}x{t}") for p, t in runs]

    base = results[0]
    print()
    print(
        f"{'run (PxT)':>9} {'samples':>7} {'loop s':>8} {'loop samples/s':>15} {'speedup':>8} "
        f"{'wall s':>8} {'end-to-end samples/s':>21} {'speedup':>8}  per-rank loop s"
    )
    for r in results:
        name = f"{r['procs']}x{r['threads_per_proc']}"
        print(
            f"{name:>9} {r['samples']:>7} {r['loop_s']:>8.2f} {r['loop_samples_per_s']:>15.2f} "
            f"{r['loop_samples_per_s'] / base['loop_samples_per_s']:>7.2f}x {r['wall_s']:>8.2f} "
            f"{r['end_to_end_samples_per_s']:>21.2f} "
            f"{r['end_to_end_samples_per_s'] / base['end_to_end_samples_per_s']:>7.2f}x  "
            + ", ".join(f"{s:.2f}" for s in r["rank_loop_s"])
        )
    if args.json:
        print(json.dumps({"model": model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
