"""finsense.parent_watch: a sweep worker ends when its launcher dies, a plain run never does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from finsense import parent_watch
from tests.e2e.helpers import wait_for

# A stand-in for loky's worker: the task is watched, stops on SIGTERM like the trainer, and
# afterwards the process waits for a next task that never comes.
_WORKER = """
import os, signal, sys, time
from pathlib import Path
from finsense.parent_watch import watch_launcher

out = Path(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))

def task():
    (out / "watched").write_text(str(watch_launcher(poll_s=0.05)))
    while not stop:
        time.sleep(0.01)
    (out / "saved").write_text("after the episode")
    raise SystemExit(143)

try:
    task()
except SystemExit:
    pass
time.sleep(600)
"""

_LAUNCHER = """
import os, subprocess, sys, time
from finsense.parent_watch import mark_launcher

mark_launcher()
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(worker.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for an absent reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_inactive_in_a_plain_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parent_watch.LAUNCHER_PID_ENV, "")  # restored (unset) after the test
    monkeypatch.delenv(parent_watch.LAUNCHER_PID_ENV)
    assert parent_watch.watch_launcher() is False
    parent_watch.mark_launcher()
    assert parent_watch.launcher_pid() == os.getpid()
    assert parent_watch.watch_launcher() is False  # the launcher itself (a plain run)
    not_the_parent = str(os.getppid() + 1)
    monkeypatch.setenv(parent_watch.LAUNCHER_PID_ENV, not_the_parent)
    parent_watch.mark_launcher()  # a launcher above this one keeps its mark
    assert parent_watch.launcher_pid() == int(not_the_parent)
    assert parent_watch.watch_launcher() is False  # not a direct child (nohup, slurmstepd)
    monkeypatch.setenv(parent_watch.LAUNCHER_PID_ENV, "not a pid")
    assert parent_watch.watch_launcher() is False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_worker_stops_gracefully_and_exits_when_its_launcher_is_killed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != parent_watch.LAUNCHER_PID_ENV}
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _WORKER, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout is not None
        worker = int(launcher.stdout.readline())
        wait_for(lambda: (tmp_path / "watched").exists(), timeout=30)
        assert (tmp_path / "watched").read_text() == "True"
        assert _alive(worker) and not (tmp_path / "saved").exists()
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    wait_for(lambda: not _alive(worker), timeout=30)
    assert (tmp_path / "saved").read_text() == "after the episode"
