"""Fixtures for end-to-end tests: run ``python -m finsense.train`` as a real subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.helpers import subprocess_env, train_argv


@pytest.fixture
def train_cmd(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the trainer to completion in ``tmp_path``; returns the finished process."""

    def run(
        *args: str, timeout: float = 180, tiny: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = train_argv(*args, tiny=tiny)
        return subprocess.run(
            argv,
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def start_train(tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    """Start the trainer in ``tmp_path`` without waiting (for signals)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, tiny: bool = True, multirun: bool = False) -> subprocess.Popen[str]:
        argv = train_argv(*args, tiny=tiny, multirun=multirun)
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start  # type: ignore[misc]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
