"""One process or many: a 2-process torchrun run on CPU (gloo) equals a 1-process run,
each rank writes its own shard, rank 0 merges, and ``vlmflow merge`` rebuilds the merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import vlmflow
from vlmflow.cli import app
from vlmflow.data import load_dataset
from vlmflow.distributed import Context, device_for, env_ranks
from vlmflow.errors import RunError
from vlmflow.store import read_records, scan

DATA = ["--data", "synthetic:2", "--task", "moving_direction", "--task", "object_count"]
KEYS = ["sample_id", "analysis", "condition", "layer"]
PROBS = ["p_pred", "p_gt", "p_pred_base", "p_pred_new", "p_gt_base", "p_gt_new"]


def flow_args(model: Path, out: Path, *targets: str) -> list[str]:
    targets = targets or ("cross-frame", "vql-to-ql")
    return [
        "flow",
        "--model",
        str(model),
        *DATA,
        "--num-frames",
        "4",
        "--window",
        "3",
        "--sample-mode",
        "all",
        *[a for t in targets for a in ("-t", t)],
        "--out",
        str(out),
    ]


FAULTY_CLI = Path(__file__).parent / "fixtures" / "faulty_cli.py"


def launch(args: list[str], nproc: int, fault: str | None = None) -> subprocess.CompletedProcess:
    """The CLI under ``torchrun --standalone --nproc_per_node NPROC`` (one thread per worker);
    ``fault``: ``KIND:RANK`` injected on that rank (see ``tests/fixtures/faulty_cli.py``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    if fault is not None:
        env["VLMFLOW_TEST_FAULT"] = fault
    target = [str(FAULTY_CLI)] if fault is not None else ["-m", "vlmflow.cli"]
    return subprocess.run(cmd + [*target, *args], env=env, capture_output=True, text=True, timeout=420)


def sorted_records(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["condition"] = df["condition"].fillna("")
    df["layer"] = df["layer"].fillna(-1)
    return df.sort_values(KEYS).reset_index(drop=True)


def test_shards_are_round_robin_and_devices_follow_local_rank() -> None:
    items = list(range(7))
    shards = [Context(rank=r, world_size=3).shard(items) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for s in shards for x in s) == items  # every sample exactly once
    assert Context().shard(items) == items  # a single process is a group of one
    assert device_for("cuda", local_rank=3, cuda_devices=2) == "cuda:1"
    assert device_for("cuda:0", local_rank=1, cuda_devices=2) == "cuda:0"  # explicit wins
    assert device_for("cuda", local_rank=1, cuda_devices=0) == "cuda"
    assert device_for("cpu", local_rank=1, cuda_devices=2) == "cpu"


def test_ranks_from_launcher_environment() -> None:
    assert env_ranks({}) is None
    assert env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    assert env_ranks({"RANK": "0", "WORLD_SIZE": "1"}) == (0, 1, 0)
    with pytest.raises(RunError, match="outside WORLD_SIZE"):
        env_ranks({"RANK": "2", "WORLD_SIZE": "2"})
    ctx = Context()
    assert ctx.on_main(lambda: 41 + 1) == 42 and ctx.gather("x") == ["x"]


def run_here(args: list[str]) -> None:
    """The CLI in this process, on one thread like each torchrun worker (OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


def test_two_processes_equal_one_and_merge(tiny_llava_path: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    run_here(flow_args(tiny_llava_path, one) + ["--quiet"])
    multi = launch(flow_args(tiny_llava_path, two), nproc=2)
    assert multi.returncode == 0, multi.stderr[-3000:]

    # each rank's progress bar and summary line, labelled by rank
    for rank in (0, 1):
        assert f"rank {rank}/2: 2 done, 0 failed, 0 already done" in multi.stderr
    assert "samples/s" in multi.stderr
    # the group's result is printed once, by rank 0 (every rank holds the group's counts)
    assert multi.stdout.count("done: 4 samples, 0 failed") == 1, multi.stdout

    # one shard per rank, samples dealt round-robin in dataset order
    ids = [s.id for s in load_dataset("synthetic:2", tasks=["moving_direction", "object_count"])]
    for rank in (0, 1):
        rows = [json.loads(line) for line in (two / "records" / f"shard-{rank:05d}.jsonl").open()]
        assert sorted({r["sample_id"] for r in rows}) == sorted(ids[rank::2])

    # rank 0 merged: the consolidated records equal the single process's
    a = sorted_records(pd.read_parquet(one / "records.parquet"))
    b = sorted_records(pd.read_parquet(two / "records.parquet"))
    assert len(a) == len(b) == 4 * (1 + 5 * 4)  # eval + 5 curves x 4 sweep layers per sample
    assert a[KEYS].equals(b[KEYS])
    for col in PROBS:
        diff = np.nanmax(np.abs(a[col].astype(float) - b[col].astype(float)))
        assert diff <= 1e-6, f"{col} differs by {diff} between 1 and 2 processes"
    assert a["pred"].fillna("-").equals(b["pred"].fillna("-"))  # the same answers

    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["sessions"][-1]["world_size"] == 2
    assert [r["done"] for r in manifest["sessions"][-1]["ranks"]] == [2, 2]
    assert manifest["samples"]["done"] == 4 and manifest["samples"]["missing"] == 0
    assert (two / "report.html").exists() and (two / "figures" / "flow-cross-frame.png").exists()

    # ranks that ended separately: `vlmflow merge` rebuilds everything from the shards
    for name in ("records.parquet", "report.html", "summary/flow.csv"):
        (two / name).unlink()
    merged = CliRunner().invoke(app, ["merge", str(two)])
    assert merged.exit_code == 0, merged.output
    assert "merged 2 shard(s)" in merged.output and "4 done, 0 failed" in merged.output
    again = sorted_records(pd.read_parquet(two / "records.parquet"))
    pd.testing.assert_frame_equal(again, b)
    assert len(read_records(two)) == len(b)
    assert (two / "report.html").exists() and (two / "summary" / "flow.csv").exists()


def test_rank0_refusal_stops_every_rank(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A folder rank 0 refuses (another configuration) must stop all ranks, not hang them."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"config": {"model": "another-model"}}))
    other = launch(flow_args(tiny_llava_path, out, "vql-to-ql") + ["--quiet"], nproc=2)
    assert other.returncode != 0
    assert "another configuration" in other.stderr
    assert "rank 0 stopped the run" in other.stderr  # rank 1 got rank 0's reason


def test_a_model_that_fails_to_load_on_rank_1_stops_every_rank(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A model that loads on rank 0 but not on rank 1 stops the whole group with rank 1's
    message (rank 0 must not go on with the folder open, nor wait for rank 1), and the
    folder is left as it was found: the same command then runs it."""
    out = tmp_path / "run"
    args = flow_args(tiny_llava_path, out, "vql-to-ql") + ["--quiet"]
    failed = launch(args, nproc=2, fault="load:1")
    assert failed.returncode != 0
    assert "checkpoint unreadable on this node (rank 1)" in failed.stderr  # rank 1's own error
    assert "rank 1 stopped the run" in failed.stderr, failed.stderr[-3000:]  # rank 0 got its reason
    assert not (out / "manifest.json").exists()  # no run started: the folder is as it was found
    assert not list(out.glob("records/*"))
    run_here(args)  # and resumable: the same command runs it
    assert json.loads((out / "manifest.json").read_text())["samples"]["done"] == 4


def test_out_of_memory_on_rank_1_is_recorded_like_on_rank_0(tiny_llava_path: Path, tmp_path: Path) -> None:
    """Running out of memory on rank 1 stops the run as it does on rank 0: the manifest
    records the stop with rank 1's reason and the counts of what every rank finished (rank
    0's share is kept), rank 1's sample is not recorded as failed, and every rank stops."""
    out = tmp_path / "run"
    stopped = launch(flow_args(tiny_llava_path, out, "vql-to-ql") + ["--quiet"], nproc=2, fault="oom:1")
    assert stopped.returncode != 0
    assert "out of memory on cpu while analysing sample" in stopped.stderr, stopped.stderr[-3000:]
    assert "rank 1 stopped the run" in stopped.stderr  # rank 0 got rank 1's reason
    manifest = json.loads((out / "manifest.json").read_text())
    reason = manifest["stopped"]["reason"]
    assert reason.startswith("rank 1 stopped the run: out of memory"), reason
    assert manifest["samples"]["done"] == 2 and manifest["samples"]["missing"] == 2  # rank 0's share
    assert read_records(out)["error"].isna().all()  # no sample's fault


def test_a_resume_shares_out_only_the_samples_left_to_do(
    tiny_llava_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume on two processes deals the samples still to do round-robin, not all samples:
    with samples 1 and 3 of 4 left, a deal over all of them would give both to rank 1 while
    rank 0 idles on its finished share. The records equal a single process's run."""
    from tests.test_determinism import canonical
    from vlmflow.analyses.information_flow import InformationFlow

    ids = [s.id for s in load_dataset("synthetic:2", tasks=["moving_direction", "object_count"])]
    one, out = tmp_path / "one", tmp_path / "run"
    args = flow_args(tiny_llava_path, out, "vql-to-ql") + ["--quiet"]
    run_here(flow_args(tiny_llava_path, one, "vql-to-ql") + ["--quiet"])
    records = InformationFlow.records

    def flaky(self, probe):
        if probe.prepared.sample.id in (ids[1], ids[3]):
            raise ValueError("decoder hiccup")
        return records(self, probe)

    monkeypatch.setattr(InformationFlow, "records", flaky)
    run_here(args)  # a first session on one process: samples 1 and 3 failed, to be retried
    monkeypatch.setattr(InformationFlow, "records", records)

    resumed = launch(flow_args(tiny_llava_path, out, "vql-to-ql"), nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):  # one retry each, and one finished sample each counted as done
        said = f"rank {rank}/2: 1 done, 0 failed, 1 already done, retried 1 previously failed"
        assert said in resumed.stderr, resumed.stderr[-3000:]
    assert "done: 2 samples, 0 failed, 2 already done" in resumed.stdout, resumed.stdout
    assert canonical(out) == canonical(one)  # the same records, whoever computed them


def test_every_rank_leaves_no_gloo_thread_behind(tiny_llava_path: Path, tmp_path: Path) -> None:
    """The process group is really destroyed at exit, before the interpreter tears down its
    modules (it is kept between runs of one process, see the next test), not while it does,
    which sometimes aborted a rank there ('terminate called without an active exception',
    exit -6): no gloo thread is left at exit, though the model loaded (and imported
    torch.distributed.fsdp) with the group up."""
    multi = launch(
        flow_args(tiny_llava_path, tmp_path / "run", "vql-to-ql") + ["--quiet"], nproc=2, fault="none:0"
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: gloo threads at exit: 0" in multi.stderr, multi.stderr[-3000:]


def test_sigterm_to_torchrun_stops_every_rank_and_rank_0_records_the_stop(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """SIGTERM to torchrun (a scheduler's preemption; torchrun passes it on to every rank,
    and SIGKILLs a rank still alive 30 s later): every rank stops as on Ctrl-C, the unit
    rank 1 is writing is finished, rank 0 records ``terminated (SIGTERM)`` with the group's
    counts, and every rank is gone well before torchrun would SIGKILL it. Rank 0 used to
    die at once: no ``stopped``, no counts."""
    import signal
    import time

    ids = [s.id for s in load_dataset("synthetic:2", tasks=["moving_direction", "object_count"])]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMFLOW_TEST_SLEEP_AFTER_ROWS": f"3:{ids[1]}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vlmflow.cli", *flow_args(tiny_llava_path, out, "vql-to-ql"), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows = out / "records" / "shard-00001.jsonl"  # rank 1's: ids[1] is its first sample
        deadline = time.monotonic() + 300
        while not (rows.exists() and f'"sample_id": "{ids[1]}"' in rows.read_text()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not get there in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 25, f"the ranks took {took:.0f} s to stop (torchrun SIGKILLs them at 30 s)"
    assert "SIGKILL" not in err, err[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stopped"]["reason"] == "terminated (SIGTERM)", err[-3000:]
    units = set(scan(out / "records").units)
    assert (ids[1], "eval") in units  # rank 1's unit being written was finished, not torn
    assert manifest["samples"]["done"] == len({s for s, a in units if a == "flow"})
    assert manifest["samples"]["done"] + manifest["samples"]["missing"] == len(ids)


def test_merge_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["merge", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


TWO_RUNS = """
import sys
import vlmflow
from vlmflow import distributed

model, out = sys.argv[1], sys.argv[2]
options = vlmflow.Options(model=model, data="synthetic:1", tasks=("moving_direction", "object_count"),
                          num_frames=4, progress=False)
for i in range(2):
    result = vlmflow.run(options, [vlmflow.AnswerProbability()], f"{out}/run{i}")
    print(f"rank {result.rank} run {i}: {result.summary.counts()}", flush=True)
for i in range(3):  # and the bare group, joined and left again
    ctx = distributed.init()
    print(f"rank {ctx.rank} init {i}: {ctx.gather(ctx.rank)}", flush=True)
    ctx.close()
"""


def test_two_runs_in_one_torchrun_program(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A program that calls ``vlmflow.run`` twice under torchrun (a sweep over models or
    folders) runs both: the process group is created once per process and kept. Each run
    used to create and destroy it, and the second group met the first one's keys in
    torchrun's rendezvous store: its ranks hung, or connected to dead ports."""
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    try:
        args = [str(script), str(tiny_llava_path), str(tmp_path)]
        done = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the second run hung: {str(exc.stderr)[-2000:]}") from None
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        for i in range(2):
            assert f"rank {rank} run {i}: 2 done, 0 failed" in done.stdout, done.stdout
        for i in range(3):
            assert f"rank {rank} init {i}: [0, 1]" in done.stdout, done.stdout
    for i in range(2):
        assert json.loads((tmp_path / f"run{i}" / "manifest.json").read_text())["samples"]["done"] == 2


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` (a child of ``parent`` with RANK=rank), or None."""
    for task in Path("/proc").iterdir():
        if not task.name.isdigit():
            continue
        try:
            ppid = int((task / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (task / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(task.name)
    return None


def test_a_rank_killed_while_rank_0_waits_is_recorded_as_a_stop(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Rank 1 killed (SIGKILL: the OOM killer, a node lost) while rank 0, done with its share,
    waits for it: rank 0 records the stop (``stopped`` naming rank 1, its own share's counts)
    and says how to resume, and the same command then finishes the run. Gloo's
    ``RuntimeError`` ('Connection closed by peer') used to escape the run unrecorded."""
    import signal
    import time

    ids = [s.id for s in load_dataset("synthetic:2", tasks=["moving_direction", "object_count"])]
    out = tmp_path / "run"
    args = flow_args(tiny_llava_path, out, "vql-to-ql") + ["--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMFLOW_TEST_SLEEP_AFTER_ROWS": f"120:{ids[1]}"}
    # torchrun checks its workers rarely here: rank 0 meets the dead peer before torchrun
    # would SIGTERM it (that case is the SIGTERM test's)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--monitor-interval", "60", "-m", "vlmflow.cli", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows, done0 = out / "records" / "shard-00001.jsonl", out / "records" / "shard-00000.done.jsonl"
        deadline = time.monotonic() + 300
        # rank 1 sleeps after its first sample's rows; rank 0 finishes its 2 samples (4 units)
        while not (
            rows.exists()
            and f'"sample_id": "{ids[1]}"' in rows.read_text()
            and done0.exists()
            and len(done0.read_text().splitlines()) == 4
        ):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not get there in time"
            time.sleep(0.1)
        time.sleep(1)  # rank 0 is in the collective after its share
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" in manifest, err[-3000:]
    reason = manifest["stopped"]["reason"]
    assert reason.startswith("rank 1 left the process group (crashed or was killed)"), reason
    assert "re-run the same command to resume" in err, err[-3000:]
    assert manifest["samples"]["done"] == 2 and manifest["samples"]["missing"] == 2  # rank 0's share
    run_here(args)  # the same command resumes it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"]["done"] == 4
    # the stopped session is kept, and the report says both sessions' process counts
    assert [s["world_size"] for s in manifest["sessions"]] == [2, 1]
    assert manifest["sessions"][0]["stopped"] == reason
    assert "<b>processes</b><span>2, then 1</span>" in (out / "report.html").read_text()


LATE_EXIT = """
import json, os, sys, threading, time
import vlmflow
import vlmflow.report
from vlmflow import distributed

model, out = sys.argv[1], sys.argv[2]
if os.environ["RANK"] == "0":
    write = vlmflow.report.finalize
    def slow(*args, **kwargs):  # a long report (figures)
        written = write(*args, **kwargs)
        time.sleep(6)
        return written
    vlmflow.report.finalize = slow
else:
    gather = distributed.Context.gather
    def gather_then_exit(self, obj):  # rank 1 lost (a node gone) while rank 0 writes the report
        got = gather(self, obj)
        threading.Timer(2, lambda: os._exit(9)).start()
        return got
    distributed.Context.gather = gather_then_exit
options = vlmflow.Options(model=model, data="synthetic:1", tasks=("moving_direction", "object_count"),
                          num_frames=4, progress=False)
result = vlmflow.run(options, [vlmflow.AnswerProbability()], out)
print(f"rank {result.rank} finished: {result.summary.counts()}", flush=True)
"""


def test_a_group_that_breaks_after_the_run_finished_leaves_it_finished(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Rank 1 gone while rank 0 writes the report (every unit finished, the session recorded):
    rank 0 warns and returns the result; the manifest is the finished run's, with one session.
    It used to raise RunStopped and record ``stopped`` and a second, stopped session."""
    script, out = tmp_path / "late_exit.py", tmp_path / "run"
    script.write_text(LATE_EXIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--monitor-interval", "60", str(script), str(tiny_llava_path), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert "rank 0 finished: 2 done, 0 failed" in done.stdout, done.stderr[-3000:]
    assert "finished; then the process group broke" in done.stderr, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest and manifest["samples"]["done"] == 2
    assert [(s["world_size"], "stopped" in s) for s in manifest["sessions"]] == [(2, False)]


THREE_RUNS = """
import sys
import vlmflow

model, out = sys.argv[1], sys.argv[2]
options = vlmflow.Options(model=model, data="synthetic:1", tasks=("moving_direction", "object_count"),
                          num_frames=4, progress=False)
for name in ("slow", "complete", "new"):
    try:
        result = vlmflow.run(options, [vlmflow.AnswerProbability()], f"{out}/{name}")
        print(f"rank {result.rank} {name}: {result.summary.counts()}", flush=True)
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
"""


def test_a_group_broken_by_its_timeout_is_named_so_and_not_used_again(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Rank 1 slower than ``VLMFLOW_DIST_TIMEOUT_S``: rank 0 says it did not answer within
    that time and to raise it (it used to say rank 1 crashed or was killed), and the later
    runs of the same program are refused before they touch their folders: a complete one
    stays as it was, a new one is not created. They used to reuse the broken group, fail at
    once, and record ``stopped`` and a session in the complete folder, and leave the new one
    with a manifest."""
    ids = [s.id for s in load_dataset("synthetic:1", tasks=["moving_direction", "object_count"])]
    options = vlmflow.Options(
        model=str(tiny_llava_path),
        data="synthetic:1",
        tasks=("moving_direction", "object_count"),
        num_frames=4,
        progress=False,
    )
    vlmflow.run(options, [vlmflow.AnswerProbability()], tmp_path / "complete")
    before = (tmp_path / "complete" / "manifest.json").read_bytes()
    script = tmp_path / "three_runs.py"
    script.write_text(THREE_RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "VLMFLOW_DIST_TIMEOUT_S": "5"}
    env["VLMFLOW_TEST_SLEEP_AFTER_ROWS"] = f"15:{ids[1]}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(tiny_llava_path), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    said = done.stdout
    assert "slow: RunStopped: rank 1 did not answer within VLMFLOW_DIST_TIMEOUT_S=5 s" in said, said
    assert "raise VLMFLOW_DIST_TIMEOUT_S" in said and "crashed or was killed) while rank 0" not in said
    for name in ("complete", "new"):
        assert f"{name}: RunError: the process group broke in an earlier run of this process" in said
    assert "start a new launch" in said
    assert (tmp_path / "complete" / "manifest.json").read_bytes() == before
    assert not (tmp_path / "new").exists()
    stopped = json.loads((tmp_path / "slow" / "manifest.json").read_text())["stopped"]
    assert stopped["reason"].startswith("rank 1 did not answer within VLMFLOW_DIST_TIMEOUT_S=5 s")
