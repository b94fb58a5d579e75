"""The checkpoint store: real files in tmp_path, real fault injection."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from finsense.checkpoint import (
    FORMAT_VERSION,
    LOCK_FILE,
    CheckpointInfo,
    CheckpointManager,
    RunLock,
    read_json,
    write_json_atomic,
)
from finsense.errors import CheckpointError, ConfigError, RunLockedError
from tests.checkpoint_child import ring

CHILD = Path(__file__).with_name("checkpoint_child.py")
REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------
def policy(episode: int) -> dict[str, Any]:
    """A small state whose content says which episode it belongs to."""
    return {"policy": {"weight": torch.full((4, 3), float(episode))}, "episode": episode}


def training(episode: int, n: int = 64) -> dict[str, Any]:
    return {"buffer": torch.arange(n, dtype=torch.float32) + episode, "steps": episode * 10}


def meta(value: float, **extra: Any) -> dict[str, Any]:
    return {"metrics": {"total_profit": value, "sharpe_ratio": 0.5}, "epsilon": 0.3, **extra}


def save(
    manager: CheckpointManager, episode: int, value: float = 1.0, with_training: bool = True
) -> CheckpointInfo:
    return manager.save(
        episode,
        policy(episode),
        meta(value),
        training_state=training(episode) if with_training else None,
    )


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name != "archive"}


def corrupt_files(directory: Path) -> set[str]:
    return {n for n in names(directory) if ".corrupt" in n}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int | None = None) -> None:
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        at = size // 2 if offset is None else offset
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([(byte[0] + 1) % 256]))  # never undone by a second flip


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "run" / "models"


@pytest.fixture
def manager(models: Path) -> CheckpointManager:
    return CheckpointManager(models, max_keep=3)


# -- saving ----------------------------------------------------------------------------------------
def test_save_writes_model_companion_and_json_with_matching_sha256(
    manager: CheckpointManager, models: Path
) -> None:
    info = save(manager, 7, value=12.5)
    pt, train, js = (
        models / "model_ep7.pt",
        models / "model_ep7.train.pt",
        models / "model_ep7.json",
    )
    assert info.path == pt and info.episode == 7
    assert info.training_path == train and info.json_path == js
    data = json.loads(js.read_text())
    assert data["sha256"] == {"model": sha256(pt), "training": sha256(train)}
    assert data["size_bytes"] == {"model": pt.stat().st_size, "training": train.stat().st_size}
    assert data["episode"] == 7
    assert data["metrics"] == {"total_profit": 12.5, "sharpe_ratio": 0.5}
    assert data["metric_name"] == "total_profit" and data["metric_value"] == 12.5
    assert data["is_best"] is True and data["epsilon"] == 0.3
    assert data["format_version"] == FORMAT_VERSION
    assert data["written_at"].endswith("+00:00")
    assert info.metadata == data
    assert not [n for n in names(models) if ".tmp-" in n]


def test_save_writes_nan_and_numpy_values_as_strict_json(
    manager: CheckpointManager, models: Path
) -> None:
    metadata = {
        "metrics": {"total_profit": np.float32(2.5), "sharpe_ratio": math.nan, "x": math.inf},
        "epsilon": np.float64(0.1),
        "config": {"hidden_sizes": (64, 64), "path": Path("/data")},
    }
    manager.save(1, policy(1), metadata)

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    data = json.loads((models / "model_ep1.json").read_text(), parse_constant=refuse)
    assert data["metrics"] == {"total_profit": 2.5, "sharpe_ratio": None, "x": None}
    assert data["config"] == {"hidden_sizes": [64, 64], "path": "/data"}
    assert data["sha256"]["training"] is None


def test_save_without_training_state_loads_back_with_none(manager: CheckpointManager) -> None:
    info = save(manager, 1, with_training=False)
    state, train_state, metadata = manager.load(info)
    assert torch.equal(state["policy"]["weight"], policy(1)["policy"]["weight"])
    assert train_state is None and metadata["episode"] == 1
    assert not info.path.with_name("model_ep1.train.pt").exists()


def test_saving_draws_no_random_numbers(manager: CheckpointManager) -> None:
    torch_state, py_state, np_state = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
    )
    for episode in range(1, 6):
        save(manager, episode, value=float(episode))
    manager.latest()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state, strict=True))


def test_unknown_metric_name_is_a_config_error_listing_the_metrics(models: Path) -> None:
    manager = CheckpointManager(models, metric_name="sharp_ratio")
    with pytest.raises(ConfigError, match="sharp_ratio") as raised:
        save(manager, 1)
    assert "sharpe_ratio" in str(raised.value) and "total_profit" in str(raised.value)
    assert names(models) == set()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"max_keep": 0}, "max_keep"), ({"mode": "avg"}, "mode"), ({"metric_name": ""}, "metric")],
)
def test_invalid_settings_are_config_errors(models: Path, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CheckpointManager(models, **kwargs)


def test_state_that_weights_only_loading_would_refuse_is_rejected_before_writing(
    manager: CheckpointManager, models: Path
) -> None:
    with pytest.raises(TypeError, match="weights_only"):
        manager.save(1, {"rng": np.arange(3)}, meta(1.0))
    assert names(models) == set()


# -- rotation and best -----------------------------------------------------------------------------
def test_rotation_keeps_max_keep_newest_and_never_the_best(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1, value=100.0)  # the best, soon rotated out of the episodic files
    for episode in range(2, 8):
        save(manager, episode, value=float(episode))
    assert manager.all_episodes() == [5, 6, 7]
    assert {n for n in names(models) if n.startswith("best_model")} == {
        "best_model.pt",
        "best_model.train.pt",
        "best_model.json",
    }
    best = manager.best()
    assert best is not None and best.episode == 1 and best.metric_value == 100.0
    state, train_state, _ = manager.load(best)
    assert state["episode"] == 1 and train_state is not None and train_state["steps"] == 10


def test_rotation_never_removes_the_checkpoint_just_written(
    manager: CheckpointManager, models: Path
) -> None:
    for episode in (10, 11, 12):
        save(manager, episode)
    save(manager, 4)  # e.g. a run resumed from an older checkpoint by path
    assert manager.all_episodes() == [4, 11, 12]


@pytest.mark.parametrize(
    ("mode", "values", "best_episode"),
    [
        ("max", [1.0, 3.0, 2.0, 3.0], 2),  # ties do not replace
        ("min", [5.0, 3.0, 4.0, 3.0], 2),
        ("max", [math.nan, 2.0, math.nan, 1.0], 2),  # nan never improves
        ("min", [math.nan, math.nan], None),
        ("max", [-5.0, -1.0, -3.0], 2),
    ],
)
def test_best_tracks_the_metric_by_mode(
    models: Path, mode: str, values: list[float], best_episode: int | None
) -> None:
    manager = CheckpointManager(models, max_keep=10, mode=mode)
    infos = [save(manager, e, value=v) for e, v in enumerate(values, start=1)]
    best = manager.best()
    if best_episode is None:
        assert best is None and manager.best_value() is None
        assert not (models / "best_model.pt").exists()
        return
    assert best is not None and best.episode == best_episode
    assert manager.best_value() == values[best_episode - 1]
    assert [i.metadata["is_best"] for i in infos].count(True) >= 1
    assert infos[best_episode - 1].metadata["is_best"] is True
    assert best.metadata["is_best"] is True
    assert os.path.samefile(models / "best_model.pt", models / f"model_ep{best_episode}.pt")


def test_update_best_writes_only_the_best_and_only_on_improvement(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 10, value=2.0)
    assert manager.improves({"total_profit": 3.0, "sharpe_ratio": 0.0})
    assert not manager.improves({"total_profit": 2.0, "sharpe_ratio": 0.0})  # ties do not count
    assert not manager.improves({"total_profit": math.nan, "sharpe_ratio": 0.0})
    assert manager.update_best(11, policy(11), meta(1.0), training_state=training(11)) is None
    assert names(models) == {f"model_ep10{k}" for k in (".pt", ".train.pt", ".json")} | {
        f"best_model{k}" for k in (".pt", ".train.pt", ".json")
    }
    info = manager.update_best(13, policy(13), meta(4.0), training_state=training(13))
    assert info is not None and info.episode == 13 and info.path == models / "best_model.pt"
    assert not (models / "model_ep13.json").exists()  # no episodic checkpoint for it
    assert (models / "model_ep10.pt").exists()  # the old best's episode is untouched
    best = manager.best()
    assert best is not None and (best.episode, best.metric_value) == (13, 4.0)
    state, train_state, data = manager.load(best)
    assert state["episode"] == 13 and train_state is not None and train_state["steps"] == 130
    assert data["is_best"] is True
    loaded = torch.load(models / "model_ep10.pt", weights_only=True)
    assert loaded["episode"] == 10  # replacing best_model.pt never wrote through a hard link
    # The next checkpoint compares with the new best.
    assert save(manager, 20, value=3.5).metadata["is_best"] is False
    assert save(manager, 30, value=4.5).metadata["is_best"] is True


def test_save_best_false_writes_no_best(models: Path) -> None:
    manager = CheckpointManager(models, save_best=False)
    info = save(manager, 1, value=3.0)
    assert info.metadata["is_best"] is False
    assert manager.best() is None and manager.best_value() is None
    assert names(models) == {"model_ep1.pt", "model_ep1.train.pt", "model_ep1.json"}


def test_best_is_rebuilt_from_the_checkpoints_when_its_files_are_damaged(
    manager: CheckpointManager, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(manager, 1, value=1.0)
    save(manager, 2, value=5.0)
    save(manager, 3, value=2.0)
    (models / "best_model.json").write_text("{ garbage")
    with caplog.at_level(logging.WARNING, logger="finsense.checkpoint"):
        best = manager.best()
    assert best is not None and best.episode == 2 and best.metric_value == 5.0
    assert "best_model.json" in caplog.text and "unreadable JSON" in caplog.text
    assert corrupt_files(models) == {
        "best_model.pt.corrupt",
        "best_model.train.pt.corrupt",
        "best_model.json.corrupt",
    }


def test_best_left_without_json_by_a_crash_is_removed_and_rebuilt(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1, value=1.0)
    save(manager, 2, value=4.0)
    (models / "best_model.json").unlink()  # as if killed inside the best update
    best = manager.best()
    assert best is not None and best.episode == 2
    assert read_json(models / "best_model.json")["episode"] == 2
    assert corrupt_files(models) == set()


def test_a_best_update_cut_short_is_completed_by_latest(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1, value=1.0)
    saved_best = {n: (models / n).read_bytes() for n in names(models) if n.startswith("best")}
    save(manager, 2, value=9.0)
    for name, data in saved_best.items():  # killed after model_ep2.json, before best_model.*
        (models / name).unlink()
        (models / name).write_bytes(data)
    assert manager.best_value() == 1.0
    latest = manager.latest()
    assert latest is not None and latest.episode == 2
    assert manager.best_value() == 9.0
    best = manager.best()
    assert best is not None and best.episode == 2


def test_a_save_after_the_best_json_is_lost_compares_with_the_checkpoints_on_disk(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1, value=8.0)
    save(manager, 2, value=1.0)
    for name in ("best_model.json", "best_model.pt", "best_model.train.pt"):
        (models / name).unlink()
    info = save(manager, 3, value=2.0)
    assert info.metadata["is_best"] is False  # 8.0 is still on disk
    best = manager.best()
    assert best is not None and best.episode == 1


# -- finding the latest ----------------------------------------------------------------------------
def test_latest_returns_the_newest_checkpoint_and_load_returns_its_state(
    manager: CheckpointManager,
) -> None:
    assert manager.latest() is None
    for episode in (3, 9, 10):
        save(manager, episode)
    info = manager.latest()
    assert info is not None and info.episode == 10
    state, train_state, metadata = manager.load(info)
    assert state["episode"] == 10 and metadata["episode"] == 10
    assert train_state is not None and torch.equal(train_state["buffer"], training(10)["buffer"])
    assert manager.all_episodes() == [3, 9, 10]


def test_a_fresh_manager_finds_what_another_saved(manager: CheckpointManager, models: Path) -> None:
    save(manager, 1)
    save(manager, 2)
    info = CheckpointManager(models).latest()
    assert info is not None and info.episode == 2


DAMAGES = {
    "truncated model file": (lambda m: truncate(m / "model_ep3.pt"), "model_ep3.pt", "truncated"),
    "flipped byte in model file": (
        lambda m: flip_byte(m / "model_ep3.pt"),
        "model_ep3.pt",
        "checksum mismatch",
    ),
    "flipped byte in companion": (
        lambda m: flip_byte(m / "model_ep3.train.pt"),
        "model_ep3.train.pt",
        "checksum mismatch",
    ),
    "truncated companion": (
        lambda m: truncate(m / "model_ep3.train.pt"),
        "model_ep3.train.pt",
        "truncated",
    ),
    "garbage JSON": (
        lambda m: (m / "model_ep3.json").write_text("{not json"),
        "model_ep3.json",
        "unreadable JSON",
    ),
    "JSON of another format": (
        lambda m: (m / "model_ep3.json").write_text('{"episode": 3}'),
        "model_ep3.json",
        "not a FinSense checkpoint",
    ),
    "missing companion": (
        lambda m: (m / "model_ep3.train.pt").unlink(),
        "model_ep3.train.pt",
        "missing companion",
    ),
    "missing model file": (
        lambda m: (m / "model_ep3.pt").unlink(),
        "model_ep3.pt",
        "missing model file",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_set_aside_with_a_warning_and_the_previous_used(
    manager: CheckpointManager, models: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    save(manager, 1, value=9.0)
    save(manager, 2, value=1.0)
    save(manager, 3, value=2.0)
    apply, culprit, reason = DAMAGES[damage]
    apply(models)
    present = {n for n in names(models) if n.startswith("model_ep3.")}
    with caplog.at_level(logging.WARNING, logger="finsense.checkpoint"):
        info = CheckpointManager(models, max_keep=3).latest()
    assert info is not None and info.episode == 2
    assert manager.load(info)[0]["episode"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(culprit in w and reason in w for w in warnings), warnings
    assert corrupt_files(models) == {f"{n}.corrupt" for n in present}
    assert not [n for n in names(models) - corrupt_files(models) if n.startswith("model_ep3.")]


def test_corrupt_names_never_overwrite_earlier_ones(
    manager: CheckpointManager, models: Path
) -> None:
    for _ in range(3):
        save(manager, 5)
        flip_byte(models / "model_ep5.pt")
        assert manager.latest() is None
    assert {n for n in corrupt_files(models) if n.startswith("model_ep5.pt")} == {
        "model_ep5.pt.corrupt",
        "model_ep5.pt.corrupt.1",
        "model_ep5.pt.corrupt.2",
    }


def test_model_file_without_json_is_an_unfinished_save_and_is_removed(
    manager: CheckpointManager, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(manager, 1)
    save(manager, 2)
    (models / "model_ep2.json").unlink()
    with caplog.at_level(logging.WARNING, logger="finsense.checkpoint"):
        info = manager.latest()
    assert info is not None and info.episode == 1
    assert "model_ep2.pt" in caplog.text and "unfinished save" in caplog.text
    assert not [n for n in names(models) if n.startswith("model_ep2")]
    assert corrupt_files(models) == set()


def test_orphan_temporary_files_are_removed(manager: CheckpointManager, models: Path) -> None:
    save(manager, 1)
    orphans = [
        ".model_ep2.pt.tmp-4242-1a2b3c",
        ".model_ep2.json.tmp-4242-ff",
        ".best_model.pt.tmp-1-0",
    ]
    for name in orphans:
        (models / name).write_bytes(b"half written")
    (models / "notes.txt").write_text("not ours")
    info = manager.latest()
    assert info is not None and info.episode == 1
    assert not any((models / n).exists() for n in orphans)
    assert (models / "notes.txt").exists()


def test_latest_reads_only_the_chosen_checkpoint_among_many(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 5000)
    for episode in range(1, 1001):  # empty files with valid-looking names: never opened
        (models / f"model_ep{episode}.pt").touch()
        (models / f"model_ep{episode}.json").touch()
    before = names(models)
    info = CheckpointManager(models, max_keep=3).latest()
    assert info is not None and info.episode == 5000
    assert names(models) == before


def test_newer_format_is_skipped_not_set_aside(manager: CheckpointManager, models: Path) -> None:
    save(manager, 1)
    save(manager, 2)
    data = read_json(models / "model_ep2.json")
    data["format_version"] = FORMAT_VERSION + 1
    write_json_atomic(models / "model_ep2.json", data)
    info = manager.latest()
    assert info is not None and info.episode == 1
    assert (models / "model_ep2.json").exists() and corrupt_files(models) == set()


# -- a checkpoint is data, never code --------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it creates the marker file named in the environment."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        marker = os.environ["FINSENSE_TEST_MARKER"]
        return (os.system, (f"touch {marker}",))


def plant(path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write a pickle payload to ``path`` and fix its JSON's checksum so it looks genuine."""
    monkeypatch.setenv("FINSENSE_TEST_MARKER", str(marker))
    torch.save({"policy": Payload()}, path)
    # The payload is live: a plain (unsafe) load would run it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    json_path = path.with_name(path.name.replace(".train.pt", ".pt").replace(".pt", ".json"))
    data = read_json(json_path)
    which = "training" if path.name.endswith(".train.pt") else "model"
    data["sha256"][which] = sha256(path)
    data["size_bytes"][which] = path.stat().st_size
    write_json_atomic(json_path, data)


@pytest.mark.parametrize("planted", ["model_ep2.pt", "model_ep2.train.pt"])
def test_planted_pickle_payload_is_never_executed_and_is_refused(
    manager: CheckpointManager,
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    planted: str,
) -> None:
    marker = tmp_path / "payload-ran"
    save(manager, 1)
    save(manager, 2)
    plant(models / planted, marker, monkeypatch)
    with pytest.raises(CheckpointError, match="not a FinSense checkpoint or unsafe to load"):
        manager.load(models / "model_ep2.pt")
    assert not marker.exists()
    with caplog.at_level(logging.WARNING, logger="finsense.checkpoint"):
        info = manager.latest()
    assert not marker.exists()
    assert info is not None and info.episode == 1
    assert planted in caplog.text and "not a FinSense checkpoint or unsafe to load" in caplog.text
    assert f"{planted}.corrupt" in corrupt_files(models)


def test_loading_a_user_named_unsafe_file_without_json_is_refused(
    manager: CheckpointManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("FINSENSE_TEST_MARKER", str(marker))
    path = tmp_path / "downloaded.pt"
    torch.save({"policy": Payload()}, path)
    with pytest.raises(CheckpointError) as raised:
        manager.load(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "unsafe to load" in message and "\n" not in message
    assert not marker.exists()


def test_load_by_path_verifies_against_the_json_beside_it(
    manager: CheckpointManager, models: Path, tmp_path: Path
) -> None:
    save(manager, 1)
    state, train_state, metadata = manager.load(str(models / "model_ep1.json"))
    assert state["episode"] == 1 and train_state is not None and metadata["episode"] == 1
    assert manager.load(models / "model_ep1.pt", with_training_state=False)[1] is None
    flip_byte(models / "model_ep1.pt")
    with pytest.raises(CheckpointError, match="model_ep1.pt: checksum mismatch"):
        manager.load(models / "model_ep1.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        manager.load(tmp_path / "nope.pt")


def test_load_of_a_bare_pt_without_json_is_unverified_but_safe(
    manager: CheckpointManager, tmp_path: Path
) -> None:
    path = tmp_path / "elsewhere" / "copied.pt"
    path.parent.mkdir()
    torch.save({"policy": {"w": torch.ones(2)}}, path)
    state, train_state, metadata = manager.load(path)
    assert torch.equal(state["policy"]["w"], torch.ones(2))
    assert train_state is None and metadata == {}


# -- failing saves ---------------------------------------------------------------------------------
def assert_intact(models: Path, episode: int) -> None:
    assert not [n for n in names(models) if ".tmp-" in n]
    info = CheckpointManager(models).latest()
    assert info is not None and info.episode == episode
    CheckpointManager(models).load(info)
    assert corrupt_files(models) == set()


def test_disk_full_while_writing_leaves_earlier_checkpoints_valid(
    manager: CheckpointManager, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(manager, 1)
    real_write = os.write
    budget = [3000]  # bytes the "disk" still takes

    def write(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(memoryview(data)[: budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(CheckpointError) as raised:
        save(manager, 2, value=50.0)
    monkeypatch.undo()
    message = str(raised.value)
    assert "model_ep2" in message and "No space left on device" in message
    assert "\n" not in message
    assert_intact(models, 1)
    assert not [n for n in names(models) if n.startswith("model_ep2")]
    assert manager.best_value() == 1.0


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_failed_rename_leaves_earlier_checkpoints_valid(
    manager: CheckpointManager, models: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    save(manager, 1)
    real_replace = os.replace
    calls = [0]

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == failing_call:  # 1: model file, 2: companion, 3: JSON
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save(manager, 2, value=0.5)
    monkeypatch.undo()
    assert_intact(models, 1)
    assert not [n for n in names(models) if n.startswith("model_ep2")]


def test_failed_fsync_leaves_earlier_checkpoints_valid(
    manager: CheckpointManager, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(manager, 1)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointError, match="model_ep2.pt.*Input/output error"):
        save(manager, 2)
    monkeypatch.undo()
    assert_intact(models, 1)


def test_file_too_large_is_a_checkpoint_error_and_leaves_earlier_ones_valid(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError, match="File too large"):
            manager.save(2, policy(2), meta(5.0), training_state=training(2, n=100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert_intact(models, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_checkpoint_error(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 1)
    models.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="Permission denied"):
            save(manager, 2)
    finally:
        models.chmod(0o755)
    assert_intact(models, 1)


def test_permission_denied_on_create_is_a_checkpoint_error(
    manager: CheckpointManager, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(manager, 1)
    real_open = os.open

    def deny(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(CheckpointError, match="Permission denied"):
        save(manager, 2)
    monkeypatch.undo()
    assert_intact(models, 1)


# -- JSON helpers ----------------------------------------------------------------------------------
def test_write_json_atomic_keeps_the_old_file_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.json"
    write_json_atomic(path, {"a": 1, "b": math.nan})
    assert read_json(path) == {"a": 1, "b": None}

    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_json_atomic(path, {"a": 2})
    monkeypatch.undo()
    assert read_json(path) == {"a": 1, "b": None}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_read_json_refuses_non_objects(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an object"):
        read_json(tmp_path / "list.json")


# -- the package's layers --------------------------------------------------------------------------
def test_durable_writes_and_layout_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import finsense.checkpoint.durable, finsense.checkpoint.layout\n"
        "from finsense.checkpoint import FORMAT_VERSION, read_json, write_json_atomic\n"
        "print('torch' in sys.modules)\n"
        "from finsense.checkpoint import CheckpointManager\n"
        "print('torch' in sys.modules)\n"
    )
    out, err = python(code).communicate(timeout=120)
    assert out.split() == ["False", "True"], err


# -- archive ---------------------------------------------------------------------------------------
def test_archive_moves_every_file_and_deletes_nothing(
    manager: CheckpointManager, models: Path
) -> None:
    assert manager.archive() is None
    save(manager, 1)
    save(manager, 2)
    (models / "model_ep9.pt.corrupt").write_bytes(b"x")
    before = names(models)
    first = manager.archive()
    assert first is not None and first.parent == models / "archive"
    assert names(models) == set() and {p.name for p in first.iterdir()} == before
    assert manager.latest() is None and manager.best() is None
    save(manager, 1)
    second = manager.archive()
    assert second is not None and second != first and first.exists()
    assert sorted(p.name for p in (models / "archive").iterdir()) == sorted(
        [first.name, second.name]
    )


def test_archive_after_moves_only_the_later_episodes_and_a_later_best(
    manager: CheckpointManager, models: Path
) -> None:
    save(manager, 2, value=1.0)
    save(manager, 4, value=5.0)  # the best
    save(manager, 6, value=2.0)
    (models / "model_ep6.pt.corrupt").write_bytes(b"x")
    archived = manager.archive(after=4)
    assert archived is not None
    assert {p.name for p in archived.iterdir()} == {
        "model_ep6.pt",
        "model_ep6.train.pt",
        "model_ep6.json",
        "model_ep6.pt.corrupt",
    }
    assert manager.all_episodes() == [2, 4]
    best = manager.best()
    assert best is not None and best.episode == 4  # the best is not after episode 4: it stays

    later = manager.archive(after=2)
    assert later is not None and later != archived
    assert "best_model.json" in {p.name for p in later.iterdir()}
    assert manager.all_episodes() == [2]
    assert manager.archive(after=2) is None  # nothing after episode 2 is left
    save(manager, 3, value=0.5)
    best = manager.best()  # rebuilt from the checkpoints that stayed: episode 2 beats 3
    assert best is not None and best.episode == 2


# -- the run lock ----------------------------------------------------------------------------------
def python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_second_process_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as lock:
        assert lock.held and RunLock.is_locked(run_dir)
        # The pid is recorded only once the command is known to run (a refusal writes nothing).
        assert (run_dir / LOCK_FILE).read_text() == ""
        lock.record_pid()
        assert (run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(run_dir).acquire()
        code = (
            "import sys\n"
            "from finsense.checkpoint import RunLock\n"
            "from finsense.errors import RunLockedError\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\n"
            "except RunLockedError as exc:\n    print(exc); sys.exit(exc.exit_code)\n"
        )
        child = python(code, str(run_dir))
        out, err = child.communicate(timeout=60)
        assert child.returncode == RunLockedError.exit_code, err
        assert f"run directory {run_dir} is in use by another FinSense process" in out
        assert f"(pid {os.getpid()})" in out
    assert not RunLock.is_locked(run_dir)
    with RunLock(run_dir):
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from finsense.checkpoint import RunLock\n"
        "lock = RunLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "lock.record_pid()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = python(code, str(run_dir))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        assert RunLock.is_locked(run_dir)
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            RunLock(run_dir).acquire()
        # A reader's scan leaves the directory alone while another process writes.
        models = run_dir / "models"
        reader = CheckpointManager(models)
        (models / ".model_ep1.pt.tmp-1-0").write_bytes(b"in flight")
        assert reader.latest() is None
        assert (models / ".model_ep1.pt.tmp-1-0").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.communicate()
    assert not RunLock.is_locked(run_dir)
    with RunLock(run_dir) as lock:
        assert lock.held


def test_scan_skips_damage_without_renaming_while_another_writer_holds_the_lock(
    manager: CheckpointManager, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import fcntl

    save(manager, 1)
    save(manager, 2)
    flip_byte(models / "model_ep2.pt")
    fd = os.open(models.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would
        with caplog.at_level(logging.WARNING, logger="finsense.checkpoint"):
            info = manager.latest()
        assert info is not None and info.episode == 1
        assert "checksum mismatch; skipped" in caplog.text
        assert corrupt_files(models) == set() and (models / "model_ep2.pt").exists()
    finally:
        os.close(fd)
    with RunLock(models.parent):  # the writer itself repairs
        assert manager.latest() is not None
        assert "model_ep2.pt.corrupt" in corrupt_files(models)


# -- readers racing a writer (issue 10) ------------------------------------------------------------
def tagged_save(manager: CheckpointManager, episode: int, value: float, tag: str) -> None:
    """A save whose weights and metadata both carry ``tag`` (which save a reader got)."""
    state = {**policy(episode), "tag": tag}
    manager.save(episode, state, meta(value, tag=tag), training_state=training(episode))


def race_on_read(monkeypatch: pytest.MonkeyPatch, name: str, commit: Any) -> list[str]:
    """Run ``commit()`` (a real save by another manager) the first time a reader is about to
    read the file ``name``: after it has read the JSON, before it reads the weights."""
    real = CheckpointManager._read_sized
    fired: list[str] = []

    def read_sized(path: Path, size: Any, what: str) -> bytes:
        if path.name == name and not fired:
            fired.append(path.name)
            commit()
        return real(path, size, what)

    monkeypatch.setattr(CheckpointManager, "_read_sized", staticmethod(read_sized))
    return fired


def assert_consistent(
    reader: CheckpointManager, info: CheckpointInfo | None, episode: int, tag: str
) -> None:
    assert info is not None and info.episode == episode and info.metadata["tag"] == tag
    state, train_state, metadata = reader.load(info)
    assert state["episode"] == metadata["episode"] == episode
    assert state["tag"] == metadata["tag"] == tag
    assert train_state is not None and train_state["steps"] == episode * 10


def test_latest_racing_a_save_of_the_same_episode_rereads_it(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointManager(models, max_keep=3)
    tagged_save(writer, 3, 1.0, "old")
    fired = race_on_read(monkeypatch, "model_ep3.pt", lambda: tagged_save(writer, 3, 1.0, "new"))
    reader = CheckpointManager(models, max_keep=3)  # writable: no run lock is held
    info = reader.latest()
    assert fired
    assert_consistent(reader, info, 3, "new")
    assert corrupt_files(models) == set()


def test_latest_racing_a_rotation_moves_on_to_the_now_newest(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointManager(models, max_keep=2)
    tagged_save(writer, 2, 1.0, "two")
    tagged_save(writer, 3, 1.0, "three")

    def three_more_saves() -> None:  # episode 3 (and 2) rotated away
        for episode in (4, 5, 6):
            tagged_save(writer, episode, 1.0, f"ep{episode}")

    fired = race_on_read(monkeypatch, "model_ep3.pt", three_more_saves)
    reader = CheckpointManager(models, max_keep=2)
    info = reader.latest()
    assert fired and not (models / "model_ep3.json").exists()
    assert_consistent(reader, info, 6, "ep6")
    assert corrupt_files(models) == set()


@pytest.mark.parametrize("how", ["save", "update_best"])
def test_best_racing_a_new_best_rereads_best_model(
    models: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    writer = CheckpointManager(models, max_keep=3)
    tagged_save(writer, 1, 1.0, "first")

    def new_best() -> None:  # best_model.* replaced in place (hard links, or written anew)
        if how == "save":
            tagged_save(writer, 2, 5.0, "second")
        else:
            state = {**policy(2), "tag": "second"}
            writer.update_best(2, state, meta(5.0, tag="second"), training_state=training(2))

    fired = race_on_read(monkeypatch, "best_model.pt", new_best)
    reader = CheckpointManager(models, max_keep=3)
    info = reader.best()
    assert fired
    assert info is not None and info.path.name == "best_model.pt"
    assert_consistent(reader, info, 2, "second")
    assert corrupt_files(models) == set()


def test_load_by_a_fresh_manager_racing_a_new_best_gets_a_consistent_pair(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointManager(models, max_keep=3)
    tagged_save(writer, 1, 1.0, "first")
    info = CheckpointManager(models).best()
    assert info is not None and info.metadata["tag"] == "first"
    fired = race_on_read(monkeypatch, "best_model.pt", lambda: tagged_save(writer, 2, 5.0, "2nd"))
    # As finsense.evaluate did: the JSON is read, then the trainer relinks best_model.*.
    state, _, metadata = CheckpointManager(models).load(info)
    assert fired
    assert state["tag"] == metadata["tag"] == "2nd" and state["episode"] == metadata["episode"] == 2
    assert corrupt_files(models) == set()


def test_load_with_the_choosing_manager_survives_a_rotation_in_between(models: Path) -> None:
    writer = CheckpointManager(models, max_keep=1)
    tagged_save(writer, 1, 1.0, "one")
    reader = CheckpointManager(models, max_keep=1)
    info = reader.latest()
    tagged_save(writer, 2, 1.0, "two")  # rotates episode 1 away
    assert info is not None and not info.path.exists()
    assert_consistent(reader, info, 1, "one")  # the files latest() verified
    with pytest.raises(CheckpointError) as raised:  # a manager of its own has nothing to read
        CheckpointManager(models).load(info)
    message = str(raised.value)
    assert "model_ep1.pt: removed while being loaded" in message and "run again" in message
    assert "\n" not in message and corrupt_files(models) == set()


def test_damage_on_stable_files_is_still_set_aside_after_a_race(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointManager(models, max_keep=3)
    tagged_save(writer, 1, 1.0, "one")
    tagged_save(writer, 2, 1.0, "two")

    def damaging_save() -> None:  # a real save, then real damage to what it wrote
        tagged_save(writer, 2, 1.0, "three")
        flip_byte(models / "model_ep2.pt")

    race_on_read(monkeypatch, "model_ep2.pt", damaging_save)
    reader = CheckpointManager(models, max_keep=3)
    info = reader.latest()
    assert_consistent(reader, info, 1, "one")
    assert "model_ep2.pt.corrupt" in corrupt_files(models)


# -- random sequences of saves and damage ----------------------------------------------------------
class Blob:
    """The content of a model file; shared by hard links (an episode and best_model)."""

    def __init__(self) -> None:
        self.damaged = False


class Files:
    """What the model expects of one checkpoint's files (episodic or best)."""

    def __init__(self, value: float, episode: int, is_best: bool = False) -> None:
        self.value = value
        self.episode = episode
        self.is_best = is_best
        self.pt: Blob | None = Blob()
        self.train: Blob | None = Blob()
        self.json = "ok"  # ok | bad | missing

    def shared(self) -> Files:
        twin = Files(self.value, self.episode, True)
        twin.pt, twin.train = self.pt, self.train
        return twin

    def valid(self) -> bool:
        return (
            self.json == "ok"
            and self.pt is not None
            and not self.pt.damaged
            and self.train is not None
            and not self.train.damaged
        )

    def present(self) -> list[str]:
        kinds = [k for k in ("pt", "train") if getattr(self, k) is not None]
        return kinds + (["json"] if self.json != "missing" else [])


SUFFIX = {"pt": ".pt", "train": ".train.pt", "json": ".json"}
VALUES = st.sampled_from([1.0, 2.0, 3.0, 5.0, -1.0, math.nan])


class CheckpointStoreMachine(RuleBasedStateMachine):
    """Random saves, damage, deletions and rescans against a model of what must be on disk.

    Checked: the files on disk are exactly the model's (so nothing valid is ever removed except
    by rotation, and every set-aside file is kept); at most ``max_keep`` episodic checkpoints;
    ``latest()`` is the newest valid one; ``best()`` is the true best while the best's files are
    undamaged, and otherwise the best valid checkpoint left on disk.
    """

    max_keep = 3

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="finsense-ck-"))
        self.models = self.root / "run" / "models"
        self.episodes: dict[int, Files] = {}
        self.best_files: Files | None = None
        self.next_episode = 1
        self.corrupt = 0
        self.saved_values: list[float] = []
        self.best_damaged = False
        self.mode = "max"
        self.manager = CheckpointManager(self.models, max_keep=self.max_keep)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @initialize(mode=st.sampled_from(["max", "min"]))
    def choose_mode(self, mode: str) -> None:
        self.mode = mode
        self.manager = CheckpointManager(self.models, max_keep=self.max_keep, mode=mode)

    # -- the model's reading of the store's rules ---------------------------------------------
    def better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def set_aside(self, files: Files) -> None:
        self.corrupt += len(files.present())

    def rebuild_best(self) -> Files | None:
        candidates = [
            (f.value, e, f)
            for e, f in self.episodes.items()
            if f.pt is not None and f.json == "ok" and not math.isnan(f.value)
        ]
        sign = 1.0 if self.mode == "max" else -1.0
        candidates.sort(key=lambda c: (sign * c[0], c[1]), reverse=True)
        for _, _, files in candidates:
            if files.valid():
                self.best_files = files.shared()
                return self.best_files
        return None

    def current_best_for_save(self) -> float | None:
        best = self.best_files
        if best is not None and best.json == "ok":
            return best.value
        if best is not None and best.json == "bad":
            self.set_aside(best)
            self.best_files = None
        rebuilt = self.rebuild_best()  # when nothing qualifies, leftovers stay until best()
        return None if rebuilt is None else rebuilt.value

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        current = self.current_best_for_save()
        return current is None or self.better(value, current)

    # -- rules ----------------------------------------------------------------------------------
    @rule(value=VALUES, gap=st.integers(1, 3))
    def save(self, value: float, gap: int) -> None:
        episode = self.next_episode
        self.next_episode += gap
        improved = self.improves(value)
        info = self.manager.save(
            episode, policy(episode), meta(value), training_state=training(episode, n=8)
        )
        assert info.metadata["is_best"] is improved
        files = Files(value, episode, improved)
        self.episodes[episode] = files
        self.saved_values.append(value)
        if improved:
            self.best_files = files.shared()
        saved = sorted((e for e, f in self.episodes.items() if f.json != "missing"), reverse=True)
        kept = {episode, *[e for e in saved if e != episode][: self.max_keep - 1]}
        for e in saved:
            if e not in kept:
                del self.episodes[e]

    @rule(value=VALUES, gap=st.integers(1, 3))
    def update_best(self, value: float, gap: int) -> None:
        """An episode off the save grid that may beat the best: only best_model.* is written."""
        episode = self.next_episode
        self.next_episode += gap
        improved = self.improves(value)
        info = self.manager.update_best(
            episode, policy(episode), meta(value), training_state=training(episode, n=8)
        )
        assert (info is not None) is improved
        self.saved_values.append(value)
        if improved:
            self.best_files = Files(value, episode, True)  # files of its own, no episodic twin

    def existing(self) -> list[tuple[int | None, str]]:
        found: list[tuple[int | None, str]] = [
            (e, kind) for e, f in sorted(self.episodes.items()) for kind in f.present()
        ]
        if self.best_files is not None:
            found += [(None, kind) for kind in self.best_files.present()]
        return found

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), action=st.sampled_from(["flip", "truncate", "delete"]))
    def damage(self, data: st.DataObject, action: str) -> None:
        episode, kind = data.draw(st.sampled_from(self.existing()))
        files = self.best_files if episode is None else self.episodes[episode]
        assert files is not None
        stem = "best_model" if episode is None else f"model_ep{episode}"
        path = self.models / f"{stem}{SUFFIX[kind]}"
        shared_with_best = (
            self.best_files is not None
            and kind != "json"
            and getattr(files, kind) is getattr(self.best_files, kind)
        )
        if episode is None or (shared_with_best and action != "delete"):
            self.best_damaged = True
        if action == "delete":
            path.unlink()
            if kind == "json":
                files.json = "missing"
            else:
                setattr(files, kind, None)
            return
        if kind == "json":
            if action == "flip":
                flip_byte(path, offset=0)
            else:
                truncate(path)
            files.json = "bad"
            return
        if action == "flip":
            flip_byte(path)
        else:
            truncate(path)
        blob = getattr(files, kind)
        assert blob is not None
        blob.damaged = True

    @rule()
    def restart(self) -> None:
        self.manager = CheckpointManager(self.models, max_keep=self.max_keep, mode=self.mode)

    @rule()
    def rescan(self) -> None:
        # latest(): unfinished ones removed, invalid ones set aside newest first.
        for e in [e for e, f in self.episodes.items() if f.json == "missing"]:
            del self.episodes[e]
        expected: int | None = None
        for e in sorted(self.episodes, reverse=True):
            if self.episodes[e].valid():
                expected = e
                break
            self.set_aside(self.episodes.pop(e))
        info = self.manager.latest()
        assert (info and info.episode) == expected
        if info is not None:
            state, train_state, _ = self.manager.load(info)
            assert state["episode"] == info.episode
            assert train_state is not None and train_state["steps"] == info.episode * 10

        # best(): a damaged best is set aside, one without JSON removed, then rebuilt.
        best = self.best_files
        if best is not None and best.json != "missing" and not best.valid():
            self.set_aside(best)
            self.best_files = None
            self.rebuild_best()
        elif best is not None and best.json == "missing":
            self.best_files = None
            if best.present():  # files left by an update cut short: removed, then rebuilt
                self.rebuild_best()
        found = self.manager.best()
        if self.best_files is None:
            assert found is None
        else:
            assert found is not None
            assert (found.episode, found.metric_value) == (
                self.best_files.episode,
                self.best_files.value,
            )
            assert self.manager.load(found)[0]["episode"] == found.episode
        if not self.best_damaged:
            values = [v for v in self.saved_values if not math.isnan(v)]
            true_best = (max if self.mode == "max" else min)(values) if values else None
            assert (found and found.metric_value) == true_best

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def disk_matches_the_model(self) -> None:
        expected = {
            f"model_ep{e}{SUFFIX[kind]}" for e, f in self.episodes.items() for kind in f.present()
        }
        if self.best_files is not None:
            expected |= {f"best_model{SUFFIX[kind]}" for kind in self.best_files.present()}
        on_disk = names(self.models)
        assert {n for n in on_disk if ".corrupt" not in n} == expected
        assert len(corrupt_files(self.models)) == self.corrupt

    @invariant()
    def at_most_max_keep_episodic_checkpoints(self) -> None:
        jsons = [n for n in names(self.models) if n.startswith("model_ep") and n.endswith(".json")]
        assert len(jsons) <= self.max_keep


TestCheckpointStoreMachine = CheckpointStoreMachine.TestCase
TestCheckpointStoreMachine.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- kill -9 at random moments ---------------------------------------------------------------------
def spawn_saver(models: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(models)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return child


@pytest.mark.slow
def test_sigkill_while_saving_always_leaves_a_valid_latest_checkpoint(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    rng = random.Random(20240229)
    start = 1
    child = spawn_saver(models)
    for _ in range(8):
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr
        upcoming = spawn_saver(models)  # imports torch while this one saves
        child.stdin.write(f"{start}\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("saved"), child.stderr
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.communicate()
        assert child.returncode == -signal.SIGKILL

        manager = CheckpointManager(models, max_keep=3)
        info = manager.latest()
        assert info is not None and info.episode >= start
        state, train_state, metadata = manager.load(info)
        assert state["episode"] == info.episode == metadata["episode"]
        assert train_state is not None and train_state["episode"] == info.episode
        assert torch.equal(train_state["ring"], ring(train_state["start"], info.episode))
        best = manager.best()
        assert best is not None
        _, best_train, _ = manager.load(best)
        assert best_train is not None
        assert torch.equal(best_train["ring"], ring(best_train["start"], best.episode))
        assert corrupt_files(models) == set()  # a crash is never mistaken for damage
        # Killed between a save and its rotation: one extra, rotated away by the next save.
        assert len(manager.all_episodes()) <= 3 + 1
        start = info.episode + 1
        child = upcoming
    child.kill()
    child.communicate()
