"""W&B and MLflow loggers: one run per history, continued on resume, each episode logged once.

Offline only: W&B with ``WANDB_MODE=offline`` (what was logged is read back from the run's
``.wandb`` files), MLflow with a local store under ``tmp_path``. The loggers are used the way the
trainer uses them: built from their config node, then ``start``, ``log`` per episode, ``close``.
A resumed session is the relived future of a killed one: from the checkpoint of episode 3 after
episodes 1..5 were logged, it logs 4..8 again, and only 6..8 may reach the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from finsense.errors import ConfigError
from finsense.loggers import LOGGERS_DIR, MLflowLogger, TensorBoardLogger, WandbLogger

CONF = Path(__file__).resolve().parents[1] / "finsense" / "conf" / "logger"
CONFIG: dict[str, Any] = {
    "seed": 0,
    "episodes": 8,
    "agent": {"learning_rate": 0.001, "hidden_sizes": [64, 64]},
}


def row(episode: int, session: int) -> dict[str, Any]:
    """A metrics.csv-like row whose profit says which session logged it; three values are not
    logged (text, a flag, NaN)."""
    return {
        "episode": episode,
        "total_profit": 1000.0 * session + episode,
        "epsilon": 1.0 / episode,
        "steps": 100 * episode,
        "note": "text",
        "flag": True,
        "bad": float("nan"),
    }


def record(run_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / LOGGERS_DIR / f"{name}.json").read_text())
    return data


# -- refused before any work ---------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "extra"), [(WandbLogger, "wandb"), (MLflowLogger, "mlflow")])
def test_a_missing_extra_is_one_line_found_without_importing(
    cls: type, extra: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    asked: list[str] = []

    def find_spec(name: str, *args: Any) -> Any:
        asked.append(name)
        return None if name == extra else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as info:
        cls()
    assert str(info.value) == (
        f"logger={extra} needs the {extra} extra: pip install 'finsense[{extra}]'"
    )
    assert asked == [extra]


@pytest.mark.parametrize("cls", [WandbLogger, MLflowLogger, TensorBoardLogger])
def test_building_a_logger_touches_no_disk(
    cls: type, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip({WandbLogger: "wandb", MLflowLogger: "mlflow"}.get(cls, "tensorboard"))
    monkeypatch.chdir(tmp_path)
    logger = cls()
    logger.close()  # never started: nothing to close, and no error
    if cls is not TensorBoardLogger:  # (which logs without start(), the old way)
        with pytest.raises(RuntimeError, match="before start"):
            logger.log(1, row(1, 0))
    assert list(tmp_path.iterdir()) == []


def test_each_config_file_builds_its_logger() -> None:
    """conf/logger/<name>.yaml: its node, under its own name, builds the class with its keys."""
    from hydra.utils import instantiate

    expected = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLflowLogger}
    for name, cls in expected.items():
        pytest.importorskip(name)
        node = OmegaConf.load(CONF / f"{name}.yaml")
        assert list(node) == [name]
        built = instantiate(node[name], _convert_="all")
        assert type(built) is cls
    assert OmegaConf.to_container(OmegaConf.load(CONF / "csv.yaml")) == {}
    many = OmegaConf.load(CONF / "many.yaml")
    assert all((CONF / f"{entry}.yaml").is_file() for entry in many.defaults)


# -- TensorBoard under the start/log/close interface ---------------------------------------------
def test_tensorboard_built_from_config_purges_the_relived_episodes(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardLogger(log_dir="tb")  # as conf/logger/tensorboard.yaml builds it
    first.start(tmp_path, 0, CONFIG)
    for episode in range(1, 8):
        first.log(episode, row(episode, 1))
    first.close()  # (a kill leaves the same points: each episode is flushed as it is logged)
    second = TensorBoardLogger(log_dir="tb")
    second.start(tmp_path, 5, CONFIG)  # resumed from the checkpoint of episode 5
    for episode in range(6, 11):
        second.log(episode, row(episode, 2))
    second.close()
    second.close()

    assert second.log_dir == tmp_path / "tb"
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("total_profit")]
    assert [step for step, _ in points] == list(range(1, 11))
    assert dict(points) == {e: (1000 if e <= 5 else 2000) + e for e in range(1, 11)}


# -- W&B -----------------------------------------------------------------------------------------
@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline W&B, its own settings and caches under tmp_path; the run directory."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline run's ``.wandb`` file (LevelDB log format, W&B header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, header = 32768, 7
    pos, parts, out = header, b"", []
    while True:
        if block - pos % block < header:
            pos += block - pos % block  # the block's zero padding
        if pos + header > len(data):
            break
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 2):  # full, first
            parts = chunk
        else:  # middle, last
            parts += chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            out.append(rec)
    return out


def wandb_sessions(
    run_dir: Path, killed: int = 0
) -> list[tuple[str, dict[int, dict[str, float]], dict[str, Any]]]:
    """Per offline session of the run directory, oldest first: (run id, {step: metrics}, config).

    Waits for each file but the first ``killed`` ones to be complete (its ``exit`` record):
    ``run.finish()`` returns before W&B's service has written it (complete when the process exits).
    """
    sessions = []
    for n, folder in enumerate(sorted((run_dir / "wandb").glob("offline-run-*"))):
        (file,) = folder.glob("run-*.wandb")
        deadline = time.monotonic() + 20
        while n >= killed and not any(
            r.WhichOneof("record_type") == "exit" for r in wandb_records(file)
        ):
            assert time.monotonic() < deadline, f"{file}: no exit record"
            time.sleep(0.05)
        history: dict[int, dict[str, float]] = {}
        config: dict[str, Any] = {}
        run_id = ""
        for rec in wandb_records(file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run_id = rec.run.run_id
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "history":
                items = {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in rec.history.item
                }
                assert rec.history.step.num not in history, "a step logged twice in one session"
                history[rec.history.step.num] = {
                    k: v for k, v in items.items() if not k.startswith("_")
                }
        assert folder.name.endswith(f"-{run_id}")
        sessions.append((run_id, history, config))
    return sessions


def test_wandb_resume_continues_the_run_with_each_episode_once(wandb_offline: Path) -> None:
    run_dir = wandb_offline
    first = WandbLogger(project="finsense-test")
    first.start(run_dir, 0, CONFIG)
    run_id = first.run_id
    for episode in range(1, 6):
        first.log(episode, row(episode, 1))
    assert record(run_dir, "wandb")["last_episode"] == 5
    # The process dies here. In one process a W&B run id is held by one run at a time, so the
    # session ends with close() (a real kill: test_wandb_resume_after_sigkill).
    first.close()

    second = WandbLogger(project="finsense-test")
    second.start(run_dir, 3, CONFIG)  # resumed from the checkpoint of episode 3
    assert second.run_id == run_id
    for episode in range(4, 9):
        second.log(episode, row(episode, 2))
    second.close()
    second.close()

    assert record(run_dir, "wandb") == {
        "run_id": run_id,
        "last_episode": 8,
        "project": "finsense-test",
        "entity": None,
        "previous_run_ids": [],
    }
    sessions = wandb_sessions(run_dir)
    assert [sid for sid, _, _ in sessions] == [run_id, run_id]
    assert [sorted(history) for _, history, _ in sessions] == [[1, 2, 3, 4, 5], [6, 7, 8]]
    merged = {step: m for _, history, _ in sessions for step, m in history.items()}
    assert {e: m["total_profit"] for e, m in merged.items()} == {
        e: (1000 if e <= 5 else 2000) + e for e in range(1, 9)
    }
    assert set(merged[1]) == {"total_profit", "epsilon", "steps"}  # no text, flag or NaN
    assert sessions[0][2]["agent"] == CONFIG["agent"]


def test_wandb_fresh_start_is_a_new_run(wandb_offline: Path) -> None:
    run_dir = wandb_offline
    old = WandbLogger()
    old.start(run_dir, 0, CONFIG)
    old.log(1, row(1, 1))
    old.close()
    old_id = old.run_id

    # start_episode 0: a new history (resume=never, or no checkpoint yet), so a new run.
    new = WandbLogger()
    new.start(run_dir, 0, CONFIG)
    new_id = new.run_id
    new.log(1, row(1, 2))
    new.close()
    assert new_id != old_id
    saved = record(run_dir, "wandb")
    assert saved["run_id"] == new_id and saved["previous_run_ids"] == [old_id]
    assert saved["last_episode"] == 1


def flushed_steps(run_dir: Path) -> int:
    """How many history records the offline file of a running session holds so far."""
    try:
        (file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = wandb_records(file)
    except (ValueError, AssertionError, struct.error):
        return 0  # not there yet, or cut mid-record
    return sum(rec.WhichOneof("record_type") == "history" for rec in records)


_KILLED_SESSION = """
import sys, time
from pathlib import Path
from finsense.loggers import WandbLogger
sys.path.insert(0, {tests!r})
from test_loggers_tracking import CONFIG, row
logger = WandbLogger(project="finsense-test")
logger.start(Path({run_dir!r}), 0, CONFIG)
for episode in range(1, 6):
    logger.log(episode, row(episode, 1))
print("logged", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_wandb_resume_after_sigkill(wandb_offline: Path) -> None:
    run_dir = wandb_offline
    # The child starts its own wandb-core service, as a new training process would (W&B hands
    # its service to child processes through WANDB_SERVICE, set by the tests run before).
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = "0.1"  # see the poll below
    code = _KILLED_SESSION.format(tests=str(Path(__file__).parent), run_dir=str(run_dir))
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "logged"
        # W&B writes an offline run's file every x_transaction_log_flush_interval (15 s by
        # default; points logged since are lost with a killed process): wait for the flush.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and flushed_steps(run_dir) < 5:
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    run_id = record(run_dir, "wandb")["run_id"]
    assert record(run_dir, "wandb")["last_episode"] == 5

    resumed = WandbLogger(project="finsense-test")
    resumed.start(run_dir, 3, CONFIG)
    assert resumed.run_id == run_id
    for episode in range(4, 9):
        resumed.log(episode, row(episode, 2))
    resumed.close()
    sessions = wandb_sessions(run_dir, killed=1)
    assert [sid for sid, _, _ in sessions] == [run_id, run_id]
    assert [sorted(history) for _, history, _ in sessions] == [[1, 2, 3, 4, 5], [6, 7, 8]]


# -- MLflow --------------------------------------------------------------------------------------
@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local MLflow file store under tmp_path (its URI)."""
    pytest.importorskip("mlflow")
    # MLflow 3 keeps its file store in maintenance mode behind this switch (its default store,
    # sqlite, takes seconds to create: test_mlflow_default_store_is_mlflow_tracking_uri).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def history(uri: str, run_id: str, key: str = "total_profit") -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    points = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((int(m.step), float(m.value)) for m in points)


def test_mlflow_resume_continues_the_run_with_each_episode_once(
    mlflow_store: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    first = MLflowLogger(tracking_uri=mlflow_store, run_name="r")
    first.start(run_dir, 0, CONFIG)
    run_id = first.run_id
    assert run_id is not None
    for episode in range(1, 6):
        first.log(episode, row(episode, 1))
    # Killed: never closed.

    second = MLflowLogger(tracking_uri=mlflow_store, run_name="r")
    second.start(run_dir, 3, {**CONFIG, "episodes": 20})  # extended: a param that changed
    assert second.run_id == run_id
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "RUNNING"
    for episode in range(4, 9):
        second.log(episode, row(episode, 2))
    second.close()
    second.close()

    assert history(mlflow_store, run_id) == [
        (e, float((1000 if e <= 5 else 2000) + e)) for e in range(1, 9)
    ]
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert set(run.data.metrics) == {"total_profit", "epsilon", "steps"}
    assert run.data.params == {
        "seed": "0",
        "episodes": "8",  # MLflow params cannot change: the first value stays
        "agent.learning_rate": "0.001",
        "agent.hidden_sizes": "[64, 64]",
    }
    assert run.data.tags["finsense.run_dir"] == str(run_dir.resolve())
    saved = record(run_dir, "mlflow")
    assert saved["run_id"] == run_id and saved["last_episode"] == 8
    assert saved["tracking_uri"] == mlflow_store and saved["previous_run_ids"] == []
    assert saved["experiment_id"] == run.info.experiment_id


def test_mlflow_counts_what_the_run_holds_when_the_record_lags(
    mlflow_store: str, tmp_path: Path
) -> None:
    """Killed after MLflow had episode 5 but before the record said so: 5 is not logged again."""
    from finsense.checkpoint import write_json_atomic

    run_dir = tmp_path / "run"
    first = MLflowLogger(tracking_uri=mlflow_store)
    first.start(run_dir, 0, CONFIG)
    for episode in range(1, 6):
        first.log(episode, row(episode, 1))
    write_json_atomic(run_dir / LOGGERS_DIR / "mlflow.json", {**first._record, "last_episode": 4})

    second = MLflowLogger(tracking_uri=mlflow_store)
    second.start(run_dir, 3, CONFIG)
    for episode in range(4, 9):
        second.log(episode, row(episode, 2))
    second.close()
    assert [step for step, _ in history(mlflow_store, str(second.run_id))] == list(range(1, 9))


def test_mlflow_fresh_start_or_a_lost_run_is_a_new_run(mlflow_store: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    old = MLflowLogger(tracking_uri=mlflow_store)
    old.start(run_dir, 0, CONFIG)
    old.log(1, row(1, 1))
    old_id = old.run_id
    old.close()

    new = MLflowLogger(tracking_uri=mlflow_store)
    new.start(run_dir, 0, CONFIG)  # a new history: a new run
    new_id = new.run_id
    new.log(1, row(1, 2))
    new.close()
    assert new_id != old_id
    assert record(run_dir, "mlflow")["previous_run_ids"] == [old_id]
    assert history(mlflow_store, str(new_id)) == [(1, 2001.0)]
    assert history(mlflow_store, str(old_id)) == [(1, 1001.0)]

    # Resumed against another store, which does not have the run: a new run there.
    elsewhere = (tmp_path / "other").as_uri()
    moved = MLflowLogger(tracking_uri=elsewhere)
    moved.start(run_dir, 1, CONFIG)
    moved.log(2, row(2, 3))
    moved.close()
    assert moved.run_id not in (old_id, new_id)
    assert record(run_dir, "mlflow")["previous_run_ids"] == [old_id, new_id]
    assert history(elsewhere, str(moved.run_id)) == [(2, 3002.0)]


def test_mlflow_params_are_flattened_and_long_values_truncated(
    mlflow_store: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    logger = MLflowLogger(tracking_uri=mlflow_store)
    config = {"env": {"data": {"path": "x" * (MAX_PARAM_VAL_LENGTH + 10)}, "cost": None}}
    logger.start(tmp_path / "run", 0, config)
    logger.close()
    params = MlflowClient(mlflow_store).get_run(str(logger.run_id)).data.params
    assert params == {"env.data.path": "x" * MAX_PARAM_VAL_LENGTH, "env.cost": "None"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's
def test_mlflow_default_store_is_mlflow_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracking_uri null: MLFLOW_TRACKING_URI, here MLflow 3's default kind of store (sqlite)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    first = MLflowLogger()
    first.start(run_dir, 0, CONFIG)
    for episode in range(1, 6):
        first.log(episode, row(episode, 1))
    second = MLflowLogger()
    second.start(run_dir, 3, CONFIG)
    for episode in range(4, 9):
        second.log(episode, row(episode, 2))
    second.close()
    assert second.run_id == first.run_id
    assert record(run_dir, "mlflow")["tracking_uri"] == uri
    assert [step for step, _ in history(uri, str(second.run_id))] == list(range(1, 9))
