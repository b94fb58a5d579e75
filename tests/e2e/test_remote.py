"""Runs that outlive their machine: ``checkpoints.remote`` end to end, against a real
S3-compatible HTTP server (moto's) started here on 127.0.0.1, and on ``file://`` URLs.

Credentials and the endpoint reach the trainer as any user's would: ``AWS_*`` variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finsense.checkpoint.layout import CHUNKS_DIR
from finsense.checkpoint.remote import RemoteModels
from finsense.status import collect_remote
from tests.e2e.helpers import load_checkpoint_tensors, subprocess_env, train_argv, wait_for
from tests.helpers import assert_same_state

pytestmark = pytest.mark.slow

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "finsense-test"
#: A short run: saves at episodes 2, 4, ...
EPISODES = "episodes=12"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """moto's S3-compatible server on 127.0.0.1 (its data lives in this process, so it
    survives :meth:`stop` and :meth:`start` on the same port)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = moto_server.ThreadedMotoServer(
            ip_address="127.0.0.1", port=self.port, verbose=False
        )
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self) -> dict[str, str]:
        """The trainer's environment: the standard AWS variables, pointing at this server."""
        env = subprocess_env()
        for key in list(env):
            if key.startswith("AWS_"):
                del env[key]
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_MAX_ATTEMPTS="1",  # fail fast when the server is down (s3fs retries too)
            NO_PROXY="127.0.0.1",
        )
        return env

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)

    def remote(self, prefix: str, run: str) -> RemoteModels:
        """The run's remote ``models/``, read from this test process."""
        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": "us-east-1"},
            skip_instance_cache=True,
        )
        return RemoteModels(f"s3://{BUCKET}/{prefix}", run, fs, f"{BUCKET}/{prefix}")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def _run(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_consistent(remote: RemoteModels) -> list[int]:
    """Every checkpoint the remote lists (its JSON is there) has all its files and chunks, each
    matching the JSON's SHA-256 and size: old or new, never a mixture. Its episodes, newest
    first."""
    listing = remote.listing()
    for name in sorted(n for n in listing.names if n.endswith(".json")):
        meta = json.loads(remote.read(name))
        stem = name[: -len(".json")]
        model = remote.read(f"{stem}.pt")
        assert hashlib.sha256(model).hexdigest() == meta["sha256"]["model"], name
        if meta["sha256"]["training"]:
            training = remote.read(f"{stem}.train.pt")
            assert hashlib.sha256(training).hexdigest() == meta["sha256"]["training"], name
        for entry in meta.get("chunked", []):
            for digest, raw, _, packed in entry["chunks"]:
                data = remote.read(f"{CHUNKS_DIR}/{digest}")
                size = raw if packed is None else packed
                assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, name
    return listing.saved()


def _rows(run_dir: Path) -> int:
    metrics = run_dir / "metrics.csv"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models of a run that never stopped (no remote)."""
    root = tmp_path_factory.mktemp("reference")
    proc = _run(root, subprocess_env(), EPISODES, f"hydra.run.dir={root / 'run'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "run" / "models"


def test_machine_lost_at_random_moments_resumes_from_s3_bit_identical(
    tmp_path: Path, s3: S3Server, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 at random moments (inside episodes, saves and uploads), the local run directory
    deleted each time (the machine is gone): every run resumes from the remote, which holds
    old or new checkpoints and never a mixture; the last one ends with the weights of a run
    that never stopped."""
    run_dir = tmp_path / "lost"
    url = f"s3://{BUCKET}/machines"
    argv = train_argv(EPISODES, f"hydra.run.dir={run_dir}", f"checkpoints.remote={url}")
    remote = s3.remote("machines", "lost")
    rng = random.Random(15)
    kills = 0
    for _ in range(2):
        newest = max(remote.listing().saved(), default=0)
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=s3.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            # Once the remote is a checkpoint further on, at a random moment after that.
            wait_for(
                lambda p=proc, n=newest: (
                    max(remote.listing().saved(), default=0) > n  # type: ignore[misc]
                    or p.poll() is not None
                )
            )
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        assert_consistent(remote)
        shutil.rmtree(run_dir)
    assert kills == 2

    final = subprocess.run(argv, cwd=tmp_path, env=s3.env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    resumed = re.search(r"Auto-resuming from episode (\d+): (\S+)", final.stdout)
    assert resumed is not None, final.stdout
    episode = int(resumed.group(1))
    assert resumed.group(2) == f"{url}/lost/models/model_ep{episode}.pt"
    assert "Traceback" not in final.stdout + final.stderr
    assert_same_state(
        load_checkpoint_tensors(reference, 12), load_checkpoint_tensors(run_dir / "models", 12)
    )
    episodes_logged = [
        int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert episodes_logged == list(range(1, 13))
    assert assert_consistent(remote)[0] == 12
    # status lists the remote run like a local one.
    for key, value in s3.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    (run,) = collect_remote(url)
    assert (run.run_dir, run.episodes_done, run.episodes_total, run.state) == (
        f"{url}/lost",
        12,
        12,
        "complete",
    )


class SlowProxy:
    """A TCP proxy on 127.0.0.1 that holds back each piece of the server's answers for
    ``delay`` seconds, so an upload (one request per object) takes long enough to be killed in
    the middle of. It serves one test and stops with it."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.delay), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(1 << 16):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def test_kill_during_an_upload_leaves_the_remote_whole_and_resumes_bit_identical(
    tmp_path: Path, s3: S3Server, reference: Path
) -> None:
    """kill -9 once a checkpoint's model file is uploaded and before its JSON is: the remote
    still holds the previous checkpoints, whole; the lost machine's run resumes from them."""
    run_dir = tmp_path / "upload"
    url = f"s3://{BUCKET}/upload"
    args = (EPISODES, f"hydra.run.dir={run_dir}", f"checkpoints.remote={url}")
    remote = s3.remote("upload", "upload")
    proxy = SlowProxy(s3.port, delay=0.15)
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    proc = subprocess.Popen(
        train_argv(*args),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    caught: list[int] = []

    def mid_upload() -> bool:
        listing = remote.listing()
        partial = [
            e
            for e in range(4, 13, 2)
            if listing.has(f"model_ep{e}", "pt") and not listing.has(f"model_ep{e}", "json")
        ]
        caught[:] = partial
        return bool(partial) or proc.poll() is not None

    try:
        wait_for(mid_upload, timeout=180, poll=0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proxy.close()
    assert caught, "the run ended before it could be killed mid-upload"
    saved = assert_consistent(remote)
    assert saved and caught[0] not in saved and saved[0] < caught[0]
    shutil.rmtree(run_dir)  # the machine is gone

    again = _run(tmp_path, s3.env(), *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        f"Auto-resuming from episode {saved[0]}: {url}/upload/models/model_ep{saved[0]}.pt"
        in again.stdout
    )
    assert_same_state(
        load_checkpoint_tensors(reference, 12), load_checkpoint_tensors(run_dir / "models", 12)
    )


def test_corrupt_remote_object_is_set_aside_remotely_and_the_previous_used(
    tmp_path: Path, s3: S3Server
) -> None:
    run_dir = tmp_path / "corrupt"
    url = f"s3://{BUCKET}/corrupt"
    args = ("episodes=6", f"hydra.run.dir={run_dir}", f"checkpoints.remote={url}")
    first = _run(tmp_path, s3.env(), *args)
    assert first.returncode == 0, first.stdout + first.stderr
    never_stopped = load_checkpoint_tensors(run_dir / "models", 6)
    shutil.rmtree(run_dir)
    remote = s3.remote("corrupt", "corrupt")
    data = bytearray(remote.read("model_ep6.train.pt"))
    data[len(data) // 2] ^= 0xFF
    remote.write("model_ep6.train.pt", bytes(data))

    again = _run(tmp_path, s3.env(), *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "model_ep6.train.pt: checksum mismatch; set aside remotely" in out
    assert f"Auto-resuming from episode 4: {url}/corrupt/models/model_ep4.pt" in out
    assert "model_ep6.train.pt.corrupt" in remote.listing().set_aside()
    assert_same_state(never_stopped, load_checkpoint_tensors(run_dir / "models", 6))
    assert assert_consistent(remote)[0] == 6  # episode 6 again, uploaded anew


def test_server_down_at_start_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    down = S3Server()  # never started: nothing listens on its port
    run_dir = tmp_path / "down"
    proc = _run(
        tmp_path,
        down.env(),
        "episodes=4",
        f"hydra.run.dir={run_dir}",
        f"checkpoints.remote=s3://{BUCKET}/down",
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert f"checkpoints.remote=s3://{BUCKET}/down: cannot reach the remote" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not run_dir.exists()


def test_url_as_run_dir_is_refused_and_makes_no_folder(tmp_path: Path) -> None:
    proc = _run(tmp_path, subprocess_env(), "episodes=2", "hydra.run.dir=s3://bucket/run1")
    assert proc.returncode == 2
    assert "checkpoints.remote=s3://bucket/run1" in proc.stderr
    assert not (tmp_path / "s3:").exists()
    assert os.listdir(tmp_path) == []


def test_server_down_mid_run_warns_trains_on_and_catches_up(tmp_path: Path) -> None:
    server = S3Server()
    server.start()
    try:
        server.create_bucket(f"{BUCKET}-mid")
        run_dir = tmp_path / "mid"
        url = f"s3://{BUCKET}-mid/p"
        remote = RemoteModels(url, "mid", server.remote("p", "mid").fs, f"{BUCKET}-mid/p")
        argv = train_argv("episodes=30", f"hydra.run.dir={run_dir}", f"checkpoints.remote={url}")
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=server.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        try:
            wait_for(lambda: remote.listing().has("model_ep2", "json") or proc.poll() is not None)
            server.stop()
            rows = _rows(run_dir)
            wait_for(
                lambda: (
                    sum("upload failed" in line for line in lines) >= 2 or proc.poll() is not None
                )
            )
            # Training goes on while the remote is down (the failures may come before the
            # next episode ends).
            wait_for(lambda: _rows(run_dir) > rows or proc.poll() is not None)
            assert _rows(run_dir) > rows
            server.start()
            assert proc.wait(timeout=240) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        out = "".join(lines)
        failures = [line for line in lines if "upload failed" in line]
        assert len(failures) >= 2 and all(line.startswith("WARNING: ") for line in failures)
        assert "training goes on" in failures[0]
        assert "Training complete: 30/30" in out and "Traceback" not in out
        assert "upload succeeded again" in out
        assert assert_consistent(remote)[0] == 30
        local = json.loads((run_dir / "models" / "model_ep30.json").read_text())
        assert json.loads(remote.read("model_ep30.json")) == local
    finally:
        server.stop()


# -- file:// URLs: no extra needed -------------------------------------------------------------


def test_file_url_resume_after_the_machine_is_lost(tmp_path: Path, reference: Path) -> None:
    url = (tmp_path / "mnt").as_uri()
    args = (EPISODES, f"hydra.run.dir={tmp_path / 'run'}", f"checkpoints.remote={url}")
    first = _run(tmp_path, subprocess_env(), "episodes=6", *args[1:])
    assert first.returncode == 0, first.stdout + first.stderr
    shutil.rmtree(tmp_path / "run")
    again = _run(tmp_path, subprocess_env(), *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Auto-resuming from episode 6: {url}/run/models/model_ep6.pt" in again.stdout
    assert_same_state(
        load_checkpoint_tensors(reference, 12),
        load_checkpoint_tensors(tmp_path / "run" / "models", 12),
    )
