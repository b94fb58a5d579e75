"""Faults injected into real trainer processes: kills at a chosen system call (``strace -e
inject=``), and the data that must survive them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import load_checkpoint_tensors, subprocess_env, train_argv, wait_for
from tests.helpers import assert_same_state

pytestmark = pytest.mark.slow
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

_RENAME = re.compile(r'rename\("([^"]+)", "([^"]+)"\)')


def _run(
    cwd: Path, run_dir: Path, *args: str, strace: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m finsense.train`` on ``run_dir``, under ``strace`` with ``strace`` options."""
    argv = train_argv(f"hydra.run.dir={run_dir}", *args)
    if strace is not None:
        argv = ["strace", "-f", "-qq", *strace, "--", *argv]
    return subprocess.run(
        argv, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


def _digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by path relative to it (temporary files aside: the
    next scan removes those)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".tmp-" not in p.name
    }


def _renames(cwd: Path, run_dir: Path, *args: str) -> list[tuple[str, str]]:
    """Every rename(2) the trainer makes with these arguments, in order (a calibration run)."""
    trace = cwd / "renames.trace"
    proc = _run(cwd, run_dir, *args, strace=["-e", "trace=rename", "-o", str(trace)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _RENAME.findall(trace.read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with checkpoints at episodes 2, 4, 6 and a best model (the template to copy)."""
    root = tmp_path_factory.mktemp("template")
    proc = _run(root, root / "run", "episodes=6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "run"


def _kill_points(renames: list[tuple[str, str]]) -> dict[str, int]:
    """1-based rename numbers (strace's ``when=``) at which to kill an archiving run: the journal,
    the first move, one in the middle, the best model's JSON, the last move."""
    moves = [i for i, (_, dst) in enumerate(renames, 1) if "/archive/" in dst]
    journal = [i for i, (_, dst) in enumerate(renames, 1) if dst.endswith("/.archive.json")]
    best_json = [i for i in moves if renames[i - 1][1].endswith("/best_model.json")]
    assert len(moves) >= 10 and journal and best_json, renames
    return {
        "journal": journal[0],
        "first move": moves[0],
        "middle move": moves[len(moves) // 2],
        "best JSON": best_json[0],
        "last move": moves[-1],
    }


@needs_strace
@pytest.mark.parametrize("then", ["auto", "never"])
def test_kill_while_archiving_for_resume_never_loses_nothing(
    tmp_path: Path, trained: Path, then: str
) -> None:
    original = {
        **_digests(trained / "models"),
        "metrics.csv": _digests(trained)["metrics.csv"],
    }
    calibration = tmp_path / "calibration"
    shutil.copytree(trained, calibration)
    points = _kill_points(_renames(tmp_path, calibration, "episodes=6", "resume=never"))
    for where, when in points.items():
        run_dir = tmp_path / where.replace(" ", "-")
        shutil.copytree(trained, run_dir)
        killed = _run(
            tmp_path,
            run_dir,
            "episodes=6",
            "resume=never",
            strace=["-e", f"inject=rename:signal=SIGKILL:when={when}", "-o", "/dev/null"],
        )
        assert killed.returncode != 0, f"{where}: not killed"

        if where == "journal":  # killed before the journal exists: nothing has changed
            assert not (run_dir / "models" / "archive").exists()
            assert _digests(run_dir / "models") == {
                k: v for k, v in original.items() if k != "metrics.csv"
            }
        again = _run(tmp_path, run_dir, "episodes=6", f"resume={then}")
        assert again.returncode == 0, where + again.stdout + again.stderr
        assert "Traceback" not in again.stdout + again.stderr
        if where == "journal" and then == "auto":
            assert "Training already complete!" in again.stdout
            continue
        # The old history is whole, byte for byte, in exactly one archive folder.
        archives = sorted((run_dir / "models" / "archive").iterdir())
        assert len(archives) == 1, f"{where}: {archives}"
        assert _digests(archives[0]) == original, where
        # And the new history starts afresh, as resume=never asked.
        assert "Starting training: 6 episodes" in again.stdout, where + again.stdout
        assert (run_dir / "models" / "model_ep6.json").exists()


@needs_strace
def test_kill_while_archiving_for_resume_path_loses_nothing(tmp_path: Path, trained: Path) -> None:
    later = {
        name: digest
        for name, digest in _digests(trained / "models").items()
        if name.startswith(("model_ep4.", "model_ep6."))
    }
    args = ("episodes=6", "resume=models/model_ep2.pt")
    calibration = tmp_path / "calibration"
    shutil.copytree(trained, calibration)
    renames = _renames(tmp_path, calibration, *args)
    moves = [i for i, (_, dst) in enumerate(renames, 1) if "/archive/" in dst]
    assert len(moves) >= 6, renames
    for when in (moves[0], moves[3]):
        run_dir = tmp_path / f"kill-{when}"
        shutil.copytree(trained, run_dir)
        killed = _run(
            tmp_path,
            run_dir,
            *args,
            strace=["-e", f"inject=rename:signal=SIGKILL:when={when}", "-o", "/dev/null"],
        )
        assert killed.returncode != 0
        again = _run(tmp_path, run_dir, *args)
        assert again.returncode == 0, again.stdout + again.stderr
        # The abandoned future (episodes 4 and 6) is whole in one archive folder.
        (archive,) = (run_dir / "models" / "archive").iterdir()
        kept = _digests(archive)
        assert {k: v for k, v in kept.items() if k in later} == later
        assert "Resuming from episode 2" in again.stdout
        assert "Resuming training from episode 3/6" in again.stdout


_CALL = re.compile(r'^\d+ +(rename|unlink)\("([^"]+)"')


def _chunk_kill_points(cwd: Path, run_dir: Path, *args: str) -> dict[str, tuple[str, int]]:
    """Where to kill a training run in the chunk store's life, as ``(syscall, when=)``: writing a
    chunk of a later save, its model file after its chunks (no JSON yet), and removing unused
    chunks after a rotation (the first and the last removal)."""
    trace = cwd / "chunks.trace"
    proc = _run(cwd, run_dir, *args, strace=["-e", "trace=rename,unlink", "-o", str(trace)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [m.groups() for m in map(_CALL.match, trace.read_text().splitlines()) if m]
    numbered: list[tuple[str, int, str]] = []
    counts = {"rename": 0, "unlink": 0}
    for call, path in calls:
        counts[call] += 1
        numbered.append((call, counts[call], path))
    chunk_writes = [n for call, n, p in numbered if call == "rename" and "/chunks/." in p]
    models = [n for call, n, p in numbered if call == "rename" and "/.model_ep" in p]
    removals = [n for call, n, p in numbered if call == "unlink" and "/chunks/" in p]
    assert len(chunk_writes) >= 10 and removals, numbered
    middle = chunk_writes[len(chunk_writes) // 2]
    return {
        "chunk write": ("rename", middle),
        "model file after its chunks": ("rename", min(n for n in models if n > middle)),
        "first collection": ("unlink", removals[0]),
        "last collection": ("unlink", removals[-1]),
    }


@needs_strace
def test_kill_mid_chunk_write_commit_or_collection_then_resume_is_bit_identical(
    tmp_path: Path,
) -> None:
    """The JSON is the commit, chunks included: a kill while chunks are written, before the
    JSON that lists them, or while unused ones are removed leaves a run that resumes to the
    very weights of a run never stopped, and nothing is mistaken for damage."""
    args = ("episodes=14",)
    reference = _run(tmp_path, tmp_path / "reference", *args)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    expected = load_checkpoint_tensors(tmp_path / "reference" / "models", 14)
    points = _chunk_kill_points(tmp_path, tmp_path / "calibration", *args)
    for where, (call, when) in points.items():
        run_dir = tmp_path / where.replace(" ", "-")
        inject = f"inject={call}:signal=SIGKILL:when={when}"
        killed = _run(tmp_path, run_dir, *args, strace=["-e", inject, "-o", "/dev/null"])
        assert killed.returncode != 0, f"{where}: not killed"
        again = _run(tmp_path, run_dir, *args)
        assert again.returncode == 0, where + again.stdout + again.stderr
        assert "Auto-resuming from episode" in again.stdout, where + again.stdout
        assert not [p for p in (run_dir / "models").rglob("*corrupt*")], where
        assert_same_state(expected, load_checkpoint_tensors(run_dir / "models", 14))


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def test_sighup_of_a_dropped_terminal_finishes_the_episode_saves_and_exits_129(
    tmp_path: Path,
) -> None:
    """SSH without nohup: the terminal hangs up (SIGHUP, then writes to it fail with EIO)."""
    run_dir = tmp_path / "run"
    master, slave = pty.openpty()
    # Far more episodes than it can train before the signal however loaded the machine, and no
    # save before it: the one checkpoint is the signal's.
    argv = train_argv(
        f"hydra.run.dir={run_dir}", "episodes=100000", "checkpoints.save_frequency=100000"
    )
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=subprocess_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        # A terminal's SIGHUP as a login shell leaves it, whatever the test runner inherited
        # (under nohup it is ignored, and the trainer rightly keeps it ignored then).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    os.close(slave)
    drain = threading.Thread(target=_drain, args=(master,), daemon=True)
    drain.start()
    try:
        wait_for(lambda: _rows(run_dir) >= 3)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        os.close(master)  # the terminal is gone: every later write to it fails
        assert proc.wait(timeout=60) == 129
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = _rows(run_dir)
    assert sorted(p.name for p in (run_dir / "models").glob("model_ep*.json")) == [
        f"model_ep{last}.json"
    ]
    log = (run_dir / "logs" / "finsense.log").read_text()
    assert f"Stopped by SIGHUP after episode {last}; checkpoint saved" in log
    assert "Traceback" not in log and "Logging error" not in log

    resumed = _run(tmp_path, run_dir, f"episodes={last + 1}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Auto-resuming from episode {last}: models/model_ep{last}.pt" in resumed.stdout


def test_sighup_is_left_ignored_under_nohup(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = train_argv(f"hydra.run.dir={run_dir}", "episodes=400")
    proc = subprocess.Popen(
        ["nohup", *argv],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _rows(run_dir) >= 2)
        proc.send_signal(signal.SIGHUP)
        rows = _rows(run_dir)
        wait_for(lambda: _rows(run_dir) >= rows + 3)  # still training
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def _drain(fd: int) -> None:
    """Read the terminal's output until it closes (a full pty would block the trainer)."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


@pytest.fixture
def mount_point(tmp_path: Path):
    """A helper to mount a filesystem under ``tmp_path`` (skips where mounting is not allowed);
    everything mounted is unmounted afterwards."""
    mounted: list[Path] = []

    def mount(*args: str, at: Path) -> None:
        at.mkdir(exist_ok=True)
        proc = subprocess.run(["mount", *args, str(at)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
        mounted.append(at)

    yield mount
    for at in reversed(mounted):
        subprocess.run(["umount", "-l", str(at)], check=False)


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".tmp")]


def test_a_full_disk_stops_training_with_one_line_and_the_run_resumes(
    tmp_path: Path, mount_point
) -> None:
    disk = tmp_path / "disk"
    mount_point("-t", "tmpfs", "-o", "size=1500k", "tmpfs", at=disk)
    run_dir = disk / "run"
    full = _run(tmp_path, run_dir, "episodes=200", "checkpoints.max_keep=50")
    combined = full.stdout + full.stderr
    assert full.returncode == 2, combined
    assert "Traceback" not in combined
    errors = [line for line in combined.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "No space left on device" in errors[0], combined
    assert _tmp_files(run_dir) == []
    saved = sorted(int(p.stem[8:]) for p in (run_dir / "models").glob("model_ep*.json"))
    assert saved, "the disk filled before the first checkpoint"

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    resumed = _run(tmp_path, run_dir, f"episodes={saved[-1] + 2}", "checkpoints.max_keep=50")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Auto-resuming from episode {saved[-1]}:" in resumed.stdout


@needs_strace
def test_a_failed_write_of_metrics_csv_is_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert _run(tmp_path, run_dir, "episodes=2").returncode == 0
    metrics = run_dir / "metrics.csv"
    proc = _run(
        tmp_path,
        run_dir,
        "episodes=6",
        strace=["-o", "/dev/null", "-P", str(metrics), "-e", "inject=write:error=ENOSPC"],
    )
    combined = proc.stdout + proc.stderr
    assert proc.returncode == 2, combined
    assert "Traceback" not in combined
    errors = [line for line in combined.splitlines() if line.startswith("ERROR")]
    assert errors == [
        f"ERROR: {metrics}: cannot append to the per-episode metrics (No space left on device); "
        "the checkpoints are intact: fix the cause (free space, permissions) and run the same "
        "command to resume"
    ]
    assert _tmp_files(run_dir) == []
    again = _run(tmp_path, run_dir, "episodes=6")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(metrics.read_text().splitlines()) == 7


def test_a_read_only_run_directory_is_one_line_for_train_and_evaluate(
    tmp_path: Path, mount_point
) -> None:
    source = tmp_path / "source"
    assert _run(tmp_path, source / "run", "episodes=2").returncode == 0
    view = tmp_path / "view"
    mount_point("--bind", str(source), at=view)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
    before = _digests(source)
    train = _run(tmp_path, view / "run", "episodes=4")
    evaluate = subprocess.run(
        [sys.executable, "-m", "finsense.evaluate", str(view / "run")],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    for proc in (train, evaluate):
        combined = proc.stdout + proc.stderr
        assert proc.returncode != 0, combined
        assert "Traceback" not in combined, combined
        assert "Read-only file system" in combined
        lines = [line for line in combined.splitlines() if "Read-only file system" in line]
        assert len(lines) == 1, combined
    assert _digests(source) == before


def test_ctrl_c_in_the_first_seconds_is_one_line_without_a_traceback(
    tmp_path: Path, start_train
) -> None:
    for delay in (0.1, 0.4, 0.8, 1.2, 1.6, 2.0):
        proc = start_train(f"hydra.run.dir={tmp_path / 'run'}", "episodes=3")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, f"{delay} s: {out}"
        if proc.returncode == 130:  # stopped before the run finished: says so in one line
            assert out.strip().splitlines()[-1].startswith("Interrupted"), out
        elif proc.returncode != 0:
            # The run had finished ("Training complete") and the signal met the interpreter's
            # shutdown, or (on a loaded machine, at 0.1 s) the interpreter had not yet started
            # and printed nothing: Python then ends by SIGINT itself, as Unix tools do (the
            # shell says 130).
            assert proc.returncode == -signal.SIGINT, out
            assert out == "" or "Training complete: 3/3 episodes" in out, f"{delay} s: {out}"
