"""Checkpoints mirrored to a remote (``checkpoints.remote``), in process, on ``file://`` URLs.

The end-to-end tests against a real S3-compatible server are in ``tests/e2e/test_remote.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from finsense.checkpoint import CheckpointManager
from finsense.checkpoint import remote as remote_module
from finsense.checkpoint.chunks import Chunked
from finsense.checkpoint.layout import CHUNKS_DIR, Listing, is_chunk_name
from finsense.checkpoint.mirrored import MirroredCheckpointManager
from finsense.checkpoint.remote import (
    Mirror,
    RemoteModels,
    RemoteView,
    open_remote,
    pull,
    upload,
)
from finsense.errors import CheckpointError, ConfigError, FinSenseError
from finsense.train import check_local_dir
from tests.helpers import assert_same_state

ROWS = 4096  # 4 chunks of 1,024 rows of 64 floats


def state(episode: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy and a training state whose buffer changes a few rows an episode."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(ROWS, 64, generator=gen)
    rows[: episode * 100] += float(episode)  # later episodes change more chunks
    stamps = [episode if i * 1024 < episode * 100 else 0 for i in range(ROWS // 1024)]
    policy = {"policy": {"w": torch.full((4,), float(episode))}}
    return policy, {"buffer": Chunked(rows, stamps, 1024), "episode": episode}


def save(manager: CheckpointManager, episode: int, value: float | None = None) -> Any:
    policy, training = state(episode)
    metrics = {"total_profit": float(episode if value is None else value)}
    return manager.save(episode, policy, {"metrics": metrics}, training_state=training)


def remote_files(remote: RemoteModels) -> dict[str, bytes]:
    """Every object under the remote ``models/`` by relative path."""
    root = Path(remote.path)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".tmp-" not in p.name
    }


def assert_consistent(remote: RemoteModels) -> list[int]:
    """Every checkpoint the remote lists (a JSON) has all its files and chunks, each matching
    its SHA-256: the remote never holds a mixture. Returns its episodes, newest first."""
    files = remote_files(remote)
    listing = remote.listing()
    for name in [n for n in listing.names if n.endswith(".json")]:
        meta = json.loads(files[name])
        stem = name[: -len(".json")]
        assert hashlib.sha256(files[f"{stem}.pt"]).hexdigest() == meta["sha256"]["model"]
        if meta["sha256"]["training"]:
            got = hashlib.sha256(files[f"{stem}.train.pt"]).hexdigest()
            assert got == meta["sha256"]["training"], name
        for entry in meta.get("chunked", []):
            for digest, raw, _, packed in entry["chunks"]:
                data = files[f"{CHUNKS_DIR}/{digest}"]
                size = raw if packed is None else packed
                assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    return listing.saved()


@pytest.fixture
def remote(tmp_path: Path) -> RemoteModels:
    return open_remote((tmp_path / "bucket").as_uri(), "run1")


@pytest.fixture
def manager(tmp_path: Path) -> CheckpointManager:
    return CheckpointManager(tmp_path / "run1" / "models", max_keep=2)


def test_open_remote_names_the_run_models_folder_and_creates_it_on_a_local_disk(
    tmp_path: Path, remote: RemoteModels
) -> None:
    assert remote.url == f"{(tmp_path / 'bucket').as_uri()}/run1/models"
    assert remote.display("model_ep4.pt").endswith("/run1/models/model_ep4.pt")
    assert (tmp_path / "bucket" / "run1" / "models").is_dir()
    assert remote.local


def test_unknown_protocol_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"checkpoints\.remote=nosuch://x"):
        open_remote("nosuch://x/y", "run")


def test_url_as_run_or_sweep_dir_is_refused_pointing_to_checkpoints_remote() -> None:
    with pytest.raises(FinSenseError, match=r"checkpoints\.remote=s3://bucket/run1"):
        check_local_dir("s3://bucket/run1", "hydra.run.dir")
    check_local_dir("outputs/run1", "hydra.run.dir")


def test_upload_mirrors_checkpoints_rotation_best_and_chunks(
    manager: CheckpointManager, remote: RemoteModels
) -> None:
    view = RemoteView()
    for episode, value in ((2, 5.0), (4, 9.0), (6, 1.0), (8, 2.0)):
        save(manager, episode, value)
        report = upload(manager.models_dir, remote, view)
        assert report.objects > 0
        local_names = {n for n in os.listdir(manager.models_dir) if not n.startswith(".")}
        remote_names = set(remote.listing().names)
        assert remote_names == local_names - {CHUNKS_DIR}
        assert set(os.listdir(manager.models_dir / CHUNKS_DIR)) == remote.chunk_names()
    assert assert_consistent(remote) == [8, 6]
    assert json.loads(remote.read("best_model.json"))["episode"] == 4
    # Nothing changed: nothing is written again.
    assert upload(manager.models_dir, remote, view).objects == 0


def test_a_new_chunk_is_uploaded_once_and_shared(
    manager: CheckpointManager, remote: RemoteModels
) -> None:
    view = RemoteView()
    save(manager, 1)
    first = upload(manager.models_dir, remote, view)
    save(manager, 2)
    second = upload(manager.models_dir, remote, view)
    # Episode 2 changes one chunk of eight: its upload is that chunk plus the small files
    # (and the best model's files, which are new too).
    assert second.bytes < first.bytes / 2


@pytest.mark.parametrize("fail_at", range(1, 9))
def test_an_upload_cut_short_leaves_old_or_new_and_the_next_catches_up(
    manager: CheckpointManager, remote: RemoteModels, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    view = RemoteView()
    save(manager, 2)
    upload(manager.models_dir, remote, view)
    save(manager, 4, value=10.0)  # a new best: its files are rewritten remotely too
    writes = {"n": 0}
    real = RemoteModels._write_path

    def failing(self: RemoteModels, path: str, data: Any) -> None:
        writes["n"] += 1
        if writes["n"] == fail_at:
            raise OSError(5, "Input/output error")
        real(self, path, data)

    monkeypatch.setattr(RemoteModels, "_write_path", failing)
    try:
        upload(manager.models_dir, remote, view)
    except OSError:
        view.clear()
    assert assert_consistent(remote)[-1] == 2  # episode 2 is whole whatever happened
    monkeypatch.setattr(RemoteModels, "_write_path", real)
    upload(manager.models_dir, remote, view)
    assert assert_consistent(remote) == [4, 2]
    assert json.loads(remote.read("best_model.json"))["episode"] == 4


def test_pull_lands_the_newest_remote_checkpoint_verified(
    tmp_path: Path, manager: CheckpointManager, remote: RemoteModels
) -> None:
    for episode in (2, 4):
        save(manager, episode)
    upload(manager.models_dir, remote)
    fresh = tmp_path / "machine2" / "run1" / "models"
    fresh.mkdir(parents=True)
    assert pull(fresh, remote, -1) == 4
    other = CheckpointManager(fresh)
    info = other.latest(resumable=True)
    assert info is not None and info.episode == 4
    got = other.load(info)
    want = manager.load(manager.latest(resumable=True))  # type: ignore[arg-type]
    assert_same_state(got[:2], want[:2])
    assert other.best() is not None  # the best model came along
    assert pull(fresh, remote, 4) is None  # nothing newer


@pytest.mark.parametrize("damage", ["model", "training", "chunk", "json"])
def test_a_corrupt_remote_object_is_set_aside_remotely_and_the_previous_used(
    tmp_path: Path,
    manager: CheckpointManager,
    remote: RemoteModels,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for episode in (2, 4):
        save(manager, episode)
    upload(manager.models_dir, remote)
    models = Path(remote.path)
    meta = json.loads(remote.read("model_ep4.json"))
    older = {
        row[0] for e in json.loads(remote.read("model_ep2.json"))["chunked"] for row in e["chunks"]
    }
    new_chunks = [row[0] for e in meta["chunked"] for row in e["chunks"] if row[0] not in older]
    target = {
        "model": models / "model_ep4.pt",
        "training": models / "model_ep4.train.pt",
        "chunk": models / CHUNKS_DIR / new_chunks[0],
        "json": models / "model_ep4.json",
    }[damage]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    fresh = tmp_path / "machine2" / "run1" / "models"
    fresh.mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert pull(fresh, remote, -1) == 2
    assert "set aside remotely" in caplog.text
    listing = remote.listing()
    assert not listing.has("model_ep4", "json")
    assert "model_ep4.json.corrupt" in listing.set_aside()  # the whole checkpoint
    if damage == "chunk":
        assert (models / CHUNKS_DIR / f"{new_chunks[0]}.corrupt").exists()
    assert CheckpointManager(fresh).latest(resumable=True).episode == 2  # type: ignore[union-attr]


def test_mirrored_manager_uploads_in_the_background_and_resumes_from_the_remote(
    tmp_path: Path, remote: RemoteModels
) -> None:
    first = MirroredCheckpointManager(tmp_path / "a" / "run1" / "models", remote, max_keep=2)
    for episode in (2, 4, 6):
        save(first, episode)
    first.close()
    assert first.mirror.ok and assert_consistent(remote) == [6, 4]

    # The machine is gone: a new one with an empty run directory resumes from the remote.
    second = MirroredCheckpointManager(tmp_path / "b" / "run1" / "models", remote, max_keep=2)
    info = second.latest(resumable=True)
    assert info is not None and info.episode == 6
    assert second.origin(info.path) == remote.display("model_ep6.pt")
    save(second, 8)
    second.close()
    assert assert_consistent(remote) == [8, 6]


def test_the_newer_valid_checkpoint_wins_local_or_remote(
    tmp_path: Path, remote: RemoteModels
) -> None:
    ahead = MirroredCheckpointManager(tmp_path / "a" / "run1" / "models", remote)
    for episode in (2, 4):
        save(ahead, episode)
    ahead.close()
    behind_dir = tmp_path / "b" / "run1" / "models"
    save(CheckpointManager(behind_dir), 2)
    behind = MirroredCheckpointManager(behind_dir, remote)
    assert behind.latest(resumable=True).episode == 4  # type: ignore[union-attr]
    # Local ahead of the remote: the local one, nothing pulled.
    save(CheckpointManager(tmp_path / "c" / "run1" / "models"), 6)
    local_ahead = MirroredCheckpointManager(tmp_path / "c" / "run1" / "models", remote)
    info = local_ahead.latest(resumable=True)
    assert info is not None and info.episode == 6 and local_ahead.origin(info.path) is None


def test_a_failing_remote_is_one_warning_per_upload_and_training_goes_on(
    tmp_path: Path,
    remote: RemoteModels,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = MirroredCheckpointManager(tmp_path / "run1" / "models", remote)
    save(manager, 2)
    manager.mirror.wait()

    def down(self: RemoteModels, path: str, data: Any) -> None:
        raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(RemoteModels, "_write_path", down)
    with caplog.at_level(logging.WARNING):
        save(manager, 4)
        save(manager, 6)
        manager.mirror.wait()
    failures = [r for r in caplog.records if "upload failed" in r.getMessage()]
    assert len(failures) == 2 and manager.mirror.ok is False
    assert "Could not connect" in failures[0].getMessage()
    monkeypatch.undo()
    save(manager, 8)
    manager.close()
    assert manager.mirror.ok and assert_consistent(remote)[0] == 8


def test_resume_never_moves_the_remote_history_aside_too(
    tmp_path: Path, remote: RemoteModels
) -> None:
    manager = MirroredCheckpointManager(tmp_path / "run1" / "models", remote)
    for episode in (2, 4):
        save(manager, episode)
    manager.close()
    before = remote_files(remote)
    manager.archive()
    listing = remote.listing()
    assert not listing.saved() and not listing.best()
    archived = {
        k.split("/", 2)[2]: v for k, v in remote_files(remote).items() if k.startswith("archive/")
    }
    for name in ("model_ep2.json", "model_ep4.pt", "best_model.json"):
        assert archived[name] == before[name]
    # The archived checkpoints keep their chunks.
    meta = json.loads(archived["model_ep4.json"])
    for entry in meta["chunked"]:
        for digest, *_ in entry["chunks"]:
            assert f"{CHUNKS_DIR}/{digest}" in archived


def test_status_lists_remote_runs_without_importing_torch(
    tmp_path: Path, manager: CheckpointManager, remote: RemoteModels
) -> None:
    save(manager, 2)
    upload(manager.models_dir, remote)
    url = (tmp_path / "bucket").as_uri()
    code = f"import sys, finsense.status as s\ns.main([{url!r}])\nprint('torch' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("RUN")
    assert f"{url}/run1" in lines[1] and "model_ep2.pt" in lines[1] and "interrupted" in lines[1]
    assert lines[-1] == "False"


def test_listing_of_a_missing_remote_folder_is_empty(remote: RemoteModels) -> None:
    assert remote.listing() == Listing(frozenset())
    assert remote.chunk_names() == set()
    assert all(is_chunk_name(n) for n in remote.chunk_names())


def test_open_remote_on_an_unwritable_local_path_is_a_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot reach the remote"):
        open_remote(blocker.as_uri() + "/sub", "run")


def test_mirror_wait_without_an_upload_returns_at_once(
    tmp_path: Path, remote: RemoteModels
) -> None:
    mirror = Mirror(tmp_path, remote)
    mirror.wait()
    assert mirror.ok is None and remote_module.RUN_FILES == ("metrics.csv",)


def test_a_request_task_dying_with_its_connection_is_debug_not_a_console_traceback() -> None:
    """aiohttp's body-writing task of an upload cut off by a server going away ends with an
    exception nobody retrieves; asyncio's ERROR report of it (with a traceback) is moved to
    debug, while any other asyncio error still reaches the handlers."""
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    logger = logging.getLogger("asyncio")
    handler = Keep()
    logger.addHandler(handler)
    try:
        remote_module._quiet_dropped_connections()
        remote_module._quiet_dropped_connections()  # installed once
        assert logger.filters.count(remote_module._DROPPED_CONNECTIONS) == 1

        def report(message: str, exc: BaseException) -> None:
            try:
                raise exc
            except BaseException:
                logger.error(message, exc_info=True)

        dropped = "Task exception was never retrieved\nfuture: <Task finished coro=write_bytes>"
        report(dropped, ConnectionResetError("Cannot write to closing transport"))
        assert caught == []
        report(dropped, ValueError("a bug, not a dropped connection"))
        report("Unclosed client session", ConnectionResetError("reset"))
        assert [r.getMessage().split("\n")[0] for r in caught] == [
            "Task exception was never retrieved",
            "Unclosed client session",
        ]
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(remote_module._DROPPED_CONNECTIONS)
