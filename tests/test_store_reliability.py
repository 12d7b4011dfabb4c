"""Nothing lost, ever (docs/reliability.md): a records file cut at every byte of its last
unit resumes with every unit exactly once and whole; a run killed with SIGKILL resumes the
same; a second process on a run folder is refused, naming the holder; a full disk stops a
run cleanly and it resumes once space returns; Ctrl-C finishes the unit being written and
exits with 130."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.data import load_dataset
from vlmflow.errors import RunError
from vlmflow.lock import FolderLock, run_lock
from vlmflow.store import RecordStore, StoreError, deferred_signals, read_records, scan, shard_status

TASKS = ["moving_direction", "object_count"]


def unit_rows(i: int) -> list[dict]:
    """Rows of unit ``i``: a few, of mixed types and non-ASCII text, different lengths."""
    return [
        {"layer": k, "p": 1 / (i + k + 3), "text": "é→" * (i % 3), "none": None, "ids": [i, k]}
        for k in range(1 + i % 3)
    ]


UNITS = [(f"s{i}", "flow") for i in range(3)]  # the last has 3 rows


def expected() -> dict[tuple[str, str], list[dict]]:
    return {u: unit_rows(i) for i, u in enumerate(UNITS)}


def resume_and_check(store: RecordStore, *, frame: bool = True) -> None:
    """What a resumed run does (write every unit not done), then: every unit exactly once,
    with exactly its rows (read through ``read_records``, or, ``frame=False``, through the
    verified scan beneath it, which is faster)."""
    done = store.done_units()
    for i, unit in enumerate(UNITS):
        if unit not in done:
            store.write_unit(*unit, unit_rows(i))
    if frame:
        rows = read_records(store.root).to_dict("records")
    else:
        found = scan(store.dir, keep_rows=True)
        rows = [r for u in sorted(found.units) for r in found.rows[found.units[u][0]]]
    got: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        unit = (row.pop("sample_id"), row.pop("analysis"))
        row.pop("_attempt", None)
        row["ids"] = list(row["ids"])
        got.setdefault(unit, []).append(row)
    assert got == expected()


def test_truncated_at_every_byte_of_the_last_unit_then_resumed(tmp_path: Path, monkeypatch) -> None:
    """Every place a crash (or a hand) can cut the files while the last unit is written, or
    after: its rows half written, its marker half written, or its finished rows cut later
    (the marker then names more rows than remain). Each resumes to every unit exactly once."""
    whole = tmp_path / "whole"
    with RecordStore(whole) as store:
        for i, unit in enumerate(UNITS[:-1]):
            store.write_unit(*unit, unit_rows(i))
        rows_before = store.rows_path.stat().st_size
        done_before = store.done_path.stat().st_size
        store.write_unit(*UNITS[-1], unit_rows(len(UNITS) - 1))
    rows_bytes = store.rows_path.read_bytes()
    done_bytes = store.done_path.read_bytes()
    assert len(rows_bytes) - rows_before > 200  # the last unit spans many offsets

    cases = []
    for k in range(rows_before, len(rows_bytes) + 1):  # killed while writing its rows
        cases.append((rows_bytes[:k], done_bytes[:done_before], False))
    for k in range(done_before, len(done_bytes) + 1):  # killed while writing its marker
        cases.append((rows_bytes, done_bytes[:k], k >= len(done_bytes) - 1))  # "\n" lost: whole
    for k in range(rows_before, len(rows_bytes)):  # rows cut after the marker was written
        cases.append((rows_bytes[:k], done_bytes, k == len(rows_bytes) - 1))  # only "\n" lost: whole

    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here: speed
    root = tmp_path / "case"
    with RecordStore(root) as store:  # one writer throughout, as in one resumed session
        for n, (rows, done, last_done) in enumerate(cases):
            store.rows_path.write_bytes(rows)
            store.done_path.write_bytes(done)
            found = set(scan(store.dir).units)
            # nothing is done that is not complete; everything complete before is done
            assert found == (set(UNITS) if last_done else set(UNITS[:-1])), (len(rows), len(done))
            resume_and_check(store, frame=n % 25 == 0)
            if n % 50 == 0:
                resume_and_check(store)  # a second resume changes nothing
                assert shard_status(root) == {"shard-00000": len(UNITS)}


def test_a_damaged_row_with_the_right_count_is_caught_by_the_checksum(tmp_path: Path) -> None:
    with RecordStore(tmp_path) as store:
        store.write_unit("s0", "flow", [{"p": 0.5}, {"p": 0.25}])
    text = store.rows_path.read_text().replace("0.25", "0.75")
    store.rows_path.write_text(text)
    assert store.done_units() == set()  # recomputed on resume, never read damaged
    assert read_records(tmp_path).empty


def test_ranks_share_a_run_but_two_writers_of_one_shard_do_not(tmp_path: Path) -> None:
    with run_lock(tmp_path), RecordStore(tmp_path, 0) as a, RecordStore(tmp_path, 1) as b:
        a.write_unit("s0", "eval", [{"p": 1.0}])  # the ranks of one group: one shard each
        b.write_unit("s1", "eval", [{"p": 1.0}])
        with pytest.raises(RunError, match=rf"record shard 0 of .* \(pid {os.getpid()} "):
            RecordStore(tmp_path, 0).acquire()
        with pytest.raises(RunError, match=rf"is in use by another vlmflow process \(pid {os.getpid()} on "):
            run_lock(tmp_path).acquire()
    with RecordStore(tmp_path, 0) as again:  # released: the next session may write
        again.write_unit("s2", "eval", [{"p": 1.0}])
    assert len(read_records(tmp_path)) == 3


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    code = (
        "import time; from vlmflow.lock import FolderLock; "
        f"lock = FolderLock({str(tmp_path / 'run.lock')!r}).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"pid {proc.pid} on "):
            FolderLock(tmp_path / "run.lock").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with FolderLock(tmp_path / "run.lock"):  # the OS released it: no stale lock to clean up
        pass


# ------------------------------------------------------------------ real runs of the CLI
def cli_args(model: Path, out: Path) -> list[str]:
    args = ["flow", "--model", str(model), "--data", "synthetic:2"]
    args += [a for t in TASKS for a in ("--task", t)]
    args += ["--num-frames", "4", "--window", "3", "--sample-mode", "all", "-t", "cross-frame"]
    return args + ["--out", str(out), "--quiet"]


def invoke(args: list[str], env: dict[str, str] | None = None):
    """The CLI in this process on one thread (like the subprocesses, OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, args, env=env)
    finally:
        torch.set_num_threads(threads)


FAULTY_CLI = Path(__file__).parent / "fixtures" / "faulty_cli.py"


def start(
    args: list[str], sigint: Any = signal.SIG_DFL, *, fault: str | None = None, **env: str
) -> subprocess.Popen:
    """The CLI in a child process. Its SIGINT starts as ``sigint`` (default: as from a
    terminal), whatever this process inherited: a test suite run as a background job of a
    shell without job control has SIGINT ignored, and so would its children. ``fault``:
    ``KIND:0`` run through ``tests/fixtures/faulty_cli.py`` with that fault."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    target = ["-m", "vlmflow.cli"]
    if fault is not None:
        full["VLMFLOW_TEST_FAULT"] = fault
        target = [str(FAULTY_CLI)]
    return subprocess.Popen(
        [sys.executable, *target, *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: (
            signal.signal(signal.SIGINT, sigint),
            signal.signal(signal.SIGTERM, signal.SIG_DFL),
        ),
    )


def wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.1)


def check_complete(out: Path, ids: list[str]) -> None:
    """Every (sample, analysis) unit exactly once, each with its full rows."""
    df = read_records(out)
    keys = ["sample_id", "analysis", "condition", "layer"]
    assert not df.fillna({"condition": "", "layer": -1}).duplicated(keys).any()
    counts = df.groupby(["sample_id", "analysis"]).size().to_dict()
    assert counts == {(i, a): n for i in ids for a, n in (("eval", 1), ("flow", 4))}


def test_sigkill_mid_run_second_process_refused_every_cut_resumes(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """A real run, paused inside a unit's write: a second run on its folder is refused at once,
    naming the holder, computing nothing. Then it is killed with SIGKILL; its records are cut
    at offsets all through the last finished unit (every boundary and a spread of offsets
    inside its rows and its marker); each resume ends with every unit exactly once, whole,
    and equal to every other resume's; the killed folder itself resumes through the CLI
    without waiting for any lock, and no unit was ever computed twice."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    killed = tmp_path / "killed"
    rows_path = killed / "records" / "shard-00000.jsonl"
    done_path = killed / "records" / "shard-00000.done.jsonl"
    proc = start(cli_args(tiny_llava_path, killed), VLMFLOW_TEST_SLEEP_AFTER_ROWS=f"300:{ids[2]}")
    try:
        wait_for(rows_path, f'"sample_id": "{ids[2]}"', proc)
        markers_before = done_path.read_bytes()
        second = invoke(cli_args(tiny_llava_path, killed))
        assert second.exit_code == 2
        assert f"is in use by another vlmflow process (pid {proc.pid} on " in second.output
        assert "cli.py flow" in second.output  # the holder's command
        assert done_path.read_bytes() == markers_before  # the second computed nothing
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(scan(killed / "records").units) == {(i, a) for i in ids[:2] for a in ("eval", "flow")}

    # where the last finished unit (ids[1], flow) lies in both files
    rows_bytes, done_bytes = rows_path.read_bytes(), done_path.read_bytes()
    attempt = json.loads(done_bytes.splitlines()[-1])["_attempt"]
    lines = rows_bytes.splitlines(keepends=True)
    mine = [i for i, line in enumerate(lines) if attempt.encode() in line]
    r0 = sum(len(x) for x in lines[: mine[0]])
    r1 = sum(len(x) for x in lines[: mine[-1] + 1])
    d0 = len(done_bytes) - len(done_bytes.splitlines(keepends=True)[-1])
    offsets = sorted(
        {(k, len(done_bytes)) for k in range(r0, r1, max(1, (r1 - r0) // 3))}
        | {(r1, k) for k in range(d0, len(done_bytes) + 1, max(1, (len(done_bytes) - d0) // 2))}
        | {(r0, d0), (r1 - 1, len(done_bytes)), (r1, len(done_bytes) - 1)}
    )

    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.models import load_model
    from vlmflow.run import run_samples

    adapter = load_model(str(tiny_llava_path), num_frames=4)
    samples = load_dataset("synthetic:2", tasks=TASKS)
    flow = [InformationFlow(targets=("cross-frame",), window=3, sample_mode="all")]
    reference = None
    case = tmp_path / "case"
    for rows_len, done_len in offsets:
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(killed, case)
        (case / "records" / "shard-00000.jsonl").write_bytes(rows_bytes[:rows_len])
        (case / "records" / "shard-00000.done.jsonl").write_bytes(done_bytes[:done_len])
        summary = run_samples(adapter, samples, flow, case, progress=False)
        whole = rows_len >= r1 - 1 and done_len >= len(done_bytes) - 1  # at most "\n"s lost
        assert summary.done == (2 if whole else 3), (rows_len, done_len)
        check_complete(case, ids)
        records = read_records(case)
        if reference is None:
            reference = records
        assert records.equals(reference), (rows_len, done_len)

    resumed = invoke(cli_args(tiny_llava_path, killed))
    assert resumed.exit_code == 0, resumed.output
    assert "done: 2 samples, 0 failed, 2 already done" in resumed.output
    check_complete(killed, ids)
    assert read_records(killed).equals(reference)
    markers = done_path.read_text().splitlines()
    assert len(markers) == 2 * len(ids)  # no unit computed twice


def test_disk_full_stops_cleanly_and_resumes(tiny_llava_path: Path, tmp_path: Path) -> None:
    """The disk fills part-way through a write (injected ENOSPC after N bytes, with what fits
    written, as a real full disk does): the run stops with a clear message, the manifest says
    what finished, nothing half-written counts, and after space returns the same command
    completes it."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    out = tmp_path / "run"
    full = invoke(cli_args(tiny_llava_path, out), env={"VLMFLOW_TEST_ENOSPC_AFTER_BYTES": "3000"})
    assert full.exit_code == 2
    assert "No space left on device" in full.output and "re-run the same command to resume" in full.output
    assert "Traceback" not in full.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "No space left on device" in manifest["stopped"]["reason"]
    finished = scan(out / "records").units
    assert 0 < len(finished) < 2 * len(ids)
    assert manifest["samples"]["done"] == len({s for s, a in finished if (s, "flow") in finished})
    assert manifest["samples"]["missing"] == len(ids) - manifest["samples"]["done"]
    raw = (out / "records" / "shard-00000.jsonl").read_bytes()
    assert not raw.endswith(b"\n")  # the disk filled inside a line: a torn fragment

    resumed = invoke(cli_args(tiny_llava_path, out))
    assert resumed.exit_code == 0, resumed.output
    check_complete(out, ids)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest and manifest["samples"]["done"] == len(ids)


def test_store_write_refused_by_the_folder_is_a_store_error(tmp_path: Path, monkeypatch) -> None:
    """A folder that refuses writes (here: a file where ``records/`` should be)."""
    (tmp_path / "records").write_text("not a folder")
    with pytest.raises(StoreError, match="re-run the same command"):
        RecordStore(tmp_path).write_unit("s0", "eval", [{"p": 1.0}])


def test_ctrl_c_finishes_the_unit_being_written_and_exits_130(tiny_llava_path: Path, tmp_path: Path) -> None:
    """SIGINT while a unit is being written (between its rows and its done marker): the
    unit is finished, the run stops before the next, says so in the manifest, exits 130."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    out = tmp_path / "run"
    proc = start(cli_args(tiny_llava_path, out), VLMFLOW_TEST_SLEEP_AFTER_ROWS=f"2:{ids[1]}")
    try:
        wait_for(out / "records" / "shard-00000.jsonl", f'"sample_id": "{ids[1]}"', proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    check_stopped_and_resumes(tiny_llava_path, out, ids, proc.returncode, err, 130, "interrupted (SIGINT)")


def check_stopped_and_resumes(
    tiny_llava_path: Path, out: Path, ids: list[str], code: int, err: str, expected: int, reason: str
) -> None:
    """The run stopped with exit status ``expected`` after finishing the unit being written
    (``ids[1]``'s), said so, recorded ``reason`` and the counts, and the same command
    resumes it to a complete folder."""
    assert code == expected, err[-2000:]
    word = reason.split()[0]
    assert f"{word}: every finished unit is kept" in err and "Traceback" not in err, err[-2000:]
    units = set(scan(out / "records").units)
    assert (ids[1], "eval") in units  # the unit being written was finished, not torn
    assert not any(s in (ids[2], ids[3]) for s, _ in units)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stopped"]["reason"] == reason
    assert manifest["samples"]["done"] + manifest["samples"]["missing"] == len(ids)
    resumed = invoke(cli_args(tiny_llava_path, out))
    assert resumed.exit_code == 0, resumed.output
    check_complete(out, ids)


def stop_while_recording(
    tiny_llava_path: Path, tmp_path: Path, sig: signal.Signals, reason: str, repeats: int
) -> tuple[int, str, Path, list[str]]:
    """Run the CLI, send ``sig`` while a unit is being written, then ``repeats`` more while
    the run records its stop (the fixture holds it there 3 s): (exit status, stderr, run
    folder, sample ids)."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    out, stopping = tmp_path / "run", tmp_path / "stopping"
    proc = start(
        cli_args(tiny_llava_path, out),
        fault="slowstop:0",
        VLMFLOW_TEST_STOP_FILE=str(stopping),
        VLMFLOW_TEST_SLEEP_AFTER_ROWS=f"2:{ids[1]}",
    )
    try:
        wait_for(out / "records" / "shard-00000.jsonl", f'"sample_id": "{ids[1]}"', proc)
        proc.send_signal(sig)
        wait_for(stopping, reason, proc)
        for k in range(repeats):
            if k:
                time.sleep(0.5)
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, out, ids


def test_more_ctrl_c_while_the_run_records_its_stop_are_ignored(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Ctrl-C, then two more while the run records what finished: the later ones are
    ignored, so the manifest still gets ``stopped`` and up-to-date counts, the CLI says how
    to resume, with no traceback, and exits 130. They used to interrupt the recording: no
    ``stopped``, no counts, no hint."""
    code, err, out, ids = stop_while_recording(
        tiny_llava_path, tmp_path, signal.SIGINT, "interrupted (SIGINT)", repeats=2
    )
    assert code == 130, err[-2000:]
    assert "interrupted: every finished unit is kept" in err and "Traceback" not in err, err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stopped"]["reason"] == "interrupted (SIGINT)"
    done = {s for s, a in scan(out / "records").units if a == "flow"}
    assert manifest["samples"]["done"] == len(done) >= 1
    assert manifest["samples"]["done"] + manifest["samples"]["missing"] == len(ids)


def test_sigterm_stops_like_ctrl_c_records_the_stop_and_exits_143(
    tiny_llava_path: Path, tmp_path: Path
) -> None:
    """SIGTERM (``kill``, a scheduler's preemption) while a unit is being written: the unit
    is finished, the manifest records ``terminated (SIGTERM)`` and the counts, the CLI says
    how to resume and exits 143; a second SIGTERM while the stop is recorded is ignored.
    SIGTERM used to end the process at once: exit -15, no ``stopped``, no counts."""
    code, err, out, ids = stop_while_recording(
        tiny_llava_path, tmp_path, signal.SIGTERM, "terminated (SIGTERM)", repeats=1
    )
    check_stopped_and_resumes(tiny_llava_path, out, ids, code, err, 143, "terminated (SIGTERM)")


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A run whose parent ignored SIGINT (a shell's background job without job control): a
    SIGINT is ignored, as by any POSIX program, and the run finishes (exit 0). The CLI's
    Ctrl-C handler used to replace the inherited SIG_IGN and stop it with 130."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    out = tmp_path / "run"
    proc = start(cli_args(tiny_llava_path, out), signal.SIG_IGN, VLMFLOW_TEST_SLEEP_AFTER_ROWS=f"2:{ids[1]}")
    try:
        wait_for(out / "records" / "shard-00000.jsonl", f'"sample_id": "{ids[1]}"', proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted" not in err
    check_complete(out, ids)
    assert "stopped" not in json.loads((out / "manifest.json").read_text())


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_stops_cleanly_and_resumes(tiny_llava_path: Path, small_disk: Path) -> None:
    """On a real full filesystem (not an injected error): fill it to a few pages, run, see
    a clean stop naming the full disk; delete the filler, re-run, and the run completes."""
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 24 * 1024))  # six 4 KiB pages left
    out = small_disk / "run"
    full = invoke(cli_args(tiny_llava_path, out))
    assert full.exit_code == 2, (full.output, full.exception)
    assert "No space left on device" in full.output and "re-run the same command" in full.output
    assert "Traceback" not in full.output
    for unit, (attempt, _) in scan(out / "records").units.items():  # what is done is whole
        assert unit[0] in ids and attempt
    filler.unlink()  # space returns
    resumed = invoke(cli_args(tiny_llava_path, out))
    assert resumed.exit_code == 0, resumed.output
    check_complete(out, ids)
    assert (out / "report.html").exists()


def test_merge_refuses_a_folder_a_run_is_writing(tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    with run_lock(tmp_path):  # a run still writing this folder
        busy = CliRunner().invoke(app, ["merge", str(tmp_path)])
    assert busy.exit_code == 2 and "is in use by another vlmflow process" in busy.output
    assert CliRunner().invoke(app, ["merge", str(tmp_path)]).exit_code == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_many_points_of_a_run_then_resume(tiny_llava, tmp_path: Path) -> None:
    """The run loop, forked with the model loaded, killed with SIGKILL ten times, each child
    resuming the folder the last kill left and killed after 5-14% of an unbroken run's time
    (computing, writing rows, writing a marker, between units: wherever the signal lands). Every state left
    reads back with whole units only, and the last resume gives every unit exactly once,
    equal to an unbroken run's records."""
    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.run import run_samples

    samples = load_dataset("synthetic:5", tasks=TASKS)
    ids = [s.id for s in samples]
    flow = [InformationFlow(targets=("cross-frame",), window=3, sample_mode="all")]
    start = time.perf_counter()
    run_samples(tiny_llava, samples, flow, tmp_path / "unbroken", progress=False)
    full = time.perf_counter() - start
    reference = read_records(tmp_path / "unbroken")

    out = tmp_path / "killed"
    killed = 0
    for k in range(10):
        pid = os.fork()
        if pid == 0:  # the child: a resumed run, until the signal lands
            try:
                run_samples(tiny_llava, samples, flow, out, progress=False)
            finally:
                os._exit(0)
        time.sleep(full * (0.05 + 0.03 * (k % 4)))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed += os.WIFSIGNALED(status)
        records = read_records(out)
        if not records.empty:  # whatever the kill left: whole units, none twice
            sizes = records.groupby(["sample_id", "analysis"]).size().to_dict()
            assert all(n == (1 if a == "eval" else 4) for (_, a), n in sizes.items()), sizes
    assert killed >= 6  # most kills landed mid-run
    run_samples(tiny_llava, samples, flow, out, progress=False)
    check_complete(out, ids)
    assert read_records(out).equals(reference)


def test_records_of_another_run_without_a_manifest_are_refused(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A flow run's records/ copied into an empty folder: a run there would take those units
    as its own and mix their records with its own, so it is refused before the model loads."""
    out = tmp_path / "copied"
    RecordStore(out).write_unit(
        "moving_direction-00000", "eval", [{"task": "moving_direction", "error": None}]
    )
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    args = ["answer-prob", "--model", str(tiny_llava_path), "--data", "synthetic:1", "--out", str(out), "-q"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert str(out) in said and "no manifest.json" in said and "1 record shard(s) and 1 done marker" in said
    assert not (out / "manifest.json").exists()
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir() if p.suffix != ".lock"} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


@pytest.mark.parametrize("damage", ["folder", "dangling link"])
def test_a_shard_that_is_a_folder_or_a_dangling_link_is_named_by_every_command(
    tiny_llava_path: Path, tmp_path: Path, damage: str
) -> None:
    """A record shard replaced by a folder or by a link to nothing: the run (before its model
    loads), ``report`` and ``merge`` each refuse with one line naming the shard and what to
    do, exit 2, and change nothing (it was ``error: IsADirectoryError: ...`` / ``this is
    unexpected: rerun with --debug``). Moved aside, its units are computed again."""
    out = tmp_path / "run"
    args = ["answer-prob", "--model", str(tiny_llava_path), "--data", "synthetic:1", "--out", str(out), "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    units = set(scan(out / "records").units)
    shard = out / "records" / "shard-00000.jsonl"
    shard.unlink()
    if damage == "folder":
        shard.mkdir()
    else:
        shard.symlink_to(tmp_path / "gone" / "shard-00000.jsonl")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}
    what = "it is a folder, not a file" if damage == "folder" else "which does not exist"
    for command in (args, ["report", str(out)], ["merge", str(out)]):
        refused = CliRunner().invoke(app, command)
        assert refused.exit_code == 2, refused.output
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: cannot read the record shard {shard}: "), lines
        assert what in lines[0] and "move it out of" in lines[0] and "unexpected" not in lines[0]
        assert "model:" not in refused.output  # the run was refused before its model loaded
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}
        assert after == before, command[0]
    shard.rmdir() if damage == "folder" else shard.unlink()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert set(scan(out / "records").units) == units and shard.is_file()


def test_a_programs_own_handlers_get_every_signal_held_back_during_a_write() -> None:
    """A program that embeds vlmflow with its own SIGINT and SIGTERM handlers gets both when
    both came during a deferred write (only the first was handed on), once each and in the
    order they came; a handler that raises stops the rest."""
    got: list[str] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, lambda s, f: got.append("INT"))
        signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == ["TERM", "INT"]

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, stop)
        got.clear()
        with pytest.raises(KeyboardInterrupt), deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == []
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
