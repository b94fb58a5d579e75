"""Per-episode metric loggers beyond ``metrics.csv`` (which the trainer always writes).

Each is chosen with ``logger=`` (``conf/logger/``; several at once: ``logger=[tensorboard,wandb]``)
and built from its config node, ``logger.<name>``, before any work starts: building one only
checks that its extra is installed. Then the trainer calls ``start(run_dir, start_episode,
config)`` once, when training (re)starts, ``log(episode, row)`` after each episode, and
``close()``. Every numeric, finite value of a row (not ``episode``, not booleans) is logged at
step ``episode``.

- :class:`TensorBoardLogger` (``logger=tensorboard``): scalars in ``RUN_DIR/tb/``.
  ``tensorboard --logdir outputs`` shows every run; ``--logdir multirun/<sweep>`` a sweep's jobs.
- :class:`WandbLogger` (``logger=wandb``): a Weights & Biases run, its files in ``RUN_DIR/wandb/``.
  ``WANDB_MODE=offline`` needs no account; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
  every session of the run, in order, as one run.
- :class:`MLflowLogger` (``logger=mlflow``): an MLflow run, the run config as its params.

Resumed runs continue the same curves. FinSense resumes bit-exactly, so a run resumed from the
checkpoint of episode ``N`` relives the episodes after ``N`` that an interrupted session had
already logged, with the same values. TensorBoard drops those points (``purge_step=N + 1``), so
each episode has one point, the newest. W&B and MLflow cannot drop points, so they keep the
first ones: ``RUN_DIR/loggers/wandb.json`` and ``RUN_DIR/loggers/mlflow.json`` hold the run's id
and the highest episode logged to it (rewritten atomically after each episode); a session started
with ``start_episode > 0`` reattaches to that run and skips every episode up to that one. A fresh
history (``start_episode == 0``: a new run directory, ``resume=never``, or a run stopped before
its first checkpoint) starts a new W&B or MLflow run and records its id; the superseded ids are
kept in the file (``previous_run_ids``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from finsense.errors import ConfigError, FinSenseError

log = logging.getLogger(__name__)

#: Where ``logger=tensorboard`` writes event files, relative to the run directory.
TENSORBOARD_DIR = "tb"
#: Where the W&B and MLflow loggers keep their run id and last episode, relative to the run dir.
LOGGERS_DIR = "loggers"
#: Row keys that are not metrics of the episode.
NOT_LOGGED: frozenset[str] = frozenset({"episode"})
MISSING_TENSORBOARD = (
    "logger=tensorboard needs the tensorboard extra: pip install 'finsense[tensorboard]' "
    "(or leave it out: metrics.csv is always written)"
)


def _missing(module: str) -> bool:
    """Whether ``module`` cannot be imported, told without importing it or its parents.

    A name blocked in ``sys.modules`` (None) is missing; otherwise its top-level package is looked
    up (``importlib.util.find_spec``): cheap, nothing is imported.
    """
    if module in sys.modules and sys.modules[module] is None:
        return True
    return importlib.util.find_spec(module.partition(".")[0]) is None


def _require_extra(module: str, extra: str) -> None:
    """Refuse ``logger=<extra>`` in one line when ``module`` (its package) is not installed."""
    if _missing(module):
        raise ConfigError(
            f"logger={extra} needs the {extra} extra: pip install 'finsense[{extra}]'"
        )


def episode_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The values of ``row`` that are logged: numeric and finite, not booleans, not ``episode``."""
    return {
        str(key): float(value)
        for key, value in row.items()
        if key not in NOT_LOGGED
        and isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardLogger:
    """Writes each episode's row as TensorBoard scalars via ``torch.utils.tensorboard``.

    One scalar per metric, tagged with the metric's own name (``total_profit``, ``epsilon``,
    ``test_sharpe_ratio``, ...). Each episode is flushed to disk as it is logged, so the points up
    to a checkpoint are never lost with the process.

    Args:
        log_dir: the event file directory, relative to the run directory given to :meth:`start`
            (an absolute path stays as it is).
        purge_step: only for use without :meth:`start` (then ``log_dir`` is relative to the
            working directory and the writer opens at the first :meth:`log`): the first episode to
            log; points at or after it from earlier sessions are dropped by TensorBoard.

    Raises:
        ConfigError: tensorboard is not installed (one line saying how to install it).
    """

    def __init__(
        self, log_dir: str | Path = TENSORBOARD_DIR, purge_step: int | None = None
    ) -> None:
        if _missing("tensorboard") or _missing("torch.utils.tensorboard"):
            raise ConfigError(MISSING_TENSORBOARD)
        self._dir = Path(log_dir)
        #: The event file directory: ``run_dir / log_dir`` once started.
        self.log_dir = self._dir
        self.purge_step = purge_step
        self._writer: Any = None
        self._closed = False

    def start(self, run_dir: Path, start_episode: int, config: dict[str, Any]) -> None:
        """Open the writer in ``run_dir / log_dir``, resuming after ``start_episode`` (0 = fresh).

        ``purge_step=start_episode + 1``: TensorBoard drops the points of later episodes that an
        interrupted session wrote (the resumed run relives them), also on a fresh start, so the
        points of a history set aside by ``resume=never`` disappear as well.
        """
        self.close()
        self._closed = False
        self.log_dir = Path(run_dir) / self._dir
        self._open(purge_step=start_episode + 1)

    def _open(self, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FinSenseError(MISSING_TENSORBOARD) from None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if purge_step is not None:
            log.debug("tensorboard: dropping points from episode %d on", purge_step)

    def log(self, episode: int, row: Mapping[str, Any]) -> None:
        """Write every numeric, finite value of ``row`` (except ``episode``) at step ``episode``."""
        if self._writer is None:
            if self._closed:
                raise RuntimeError("TensorBoardLogger.log() after close()")
            self._open(purge_step=self.purge_step)
        for key, value in episode_metrics(row).items():
            self._writer.add_scalar(key, value, global_step=episode)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (again: nothing)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TrackedRunLogger:
    """A logger whose backend keeps one run across sessions (W&B, MLflow).

    ``RUN_DIR/loggers/<name>.json`` holds ``run_id`` and ``last_episode``, the highest episode
    logged to that run; it is rewritten (atomically) after each logged episode, once the backend
    has the episode. Subclasses open, write and close the backend's run.
    """

    #: The ``logger=`` name: the extra, the record file and the messages.
    name = ""

    def __init__(self) -> None:
        self._run: Any = None
        self._record_path: Path | None = None
        self._record: dict[str, Any] = {}
        self._last_episode = 0

    @property
    def run_id(self) -> str | None:
        """The backend's id of the run logged to (None before :meth:`start`)."""
        run_id = self._record.get("run_id")
        return str(run_id) if run_id is not None else None

    def start(self, run_dir: Path, start_episode: int, config: dict[str, Any]) -> None:
        """Reattach to the run of ``RUN_DIR/loggers/<name>.json``, or start a new one.

        ``start_episode > 0`` (a resume) continues the recorded run, skipping the episodes it
        already has; ``start_episode == 0`` (a fresh history) always starts a new run. ``config``
        (the plain run config) becomes the run's config or params.
        """
        from finsense.checkpoint import read_json, write_json_atomic

        self.close()
        path = Path(run_dir) / LOGGERS_DIR / f"{self.name}.json"
        saved: dict[str, Any] = {}
        try:
            saved = read_json(path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); starting a new %s run", path, exc, self.name)
        old_id = saved.get("run_id") if isinstance(saved.get("run_id"), str) else None
        old_last = saved.get("last_episode")
        old_last = old_last if isinstance(old_last, int) and not isinstance(old_last, bool) else 0
        resume_id = old_id if start_episode > 0 else None
        run_id, last = self._open(Path(run_dir), resume_id, old_last, config)
        if run_id != resume_id:
            last = 0
        previous = [i for i in saved.get("previous_run_ids", []) if isinstance(i, str)]
        if old_id is not None and old_id != run_id and old_id not in previous:
            previous.append(old_id)
        self._record = {
            "run_id": run_id,
            "last_episode": last,
            **self._describe(),
            "previous_run_ids": previous,
        }
        self._record_path = path
        self._last_episode = last
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, self._record)
        except OSError as exc:
            self._close_quietly()
            raise self._record_error(exc) from None
        if run_id == resume_id:
            log.info(
                "%s: run %s resumed; episodes up to %d already logged", self.name, run_id, last
            )
        else:
            log.info("%s: new run %s", self.name, run_id)

    def log(self, episode: int, row: Mapping[str, Any]) -> None:
        """Log ``row`` at step ``episode``, unless the run already has that episode."""
        if self._run is None:
            raise RuntimeError(f"{type(self).__name__}.log() before start() or after close()")
        if episode <= self._last_episode:
            return  # logged by an interrupted session; the resumed run relives the same values
        metrics = episode_metrics(row)
        if metrics:
            self._log(episode, metrics)
        self._last_episode = episode
        self._record["last_episode"] = episode
        from finsense.checkpoint import write_json_atomic

        assert self._record_path is not None
        try:
            # Not fsynced (12 ms -> ~0.1 ms an episode): a killed process loses nothing the
            # kernel has; only a power loss could leave the record an episode or two behind.
            write_json_atomic(self._record_path, self._record, durable=False)
        except OSError as exc:
            raise self._record_error(exc) from None

    def close(self) -> None:
        """Finish the run (again: nothing)."""
        if self._run is None:
            return
        try:
            self._close()
        finally:
            self._run = None

    def __enter__(self) -> _TrackedRunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the error being raised matters more
            log.debug("%s: close failed", self.name, exc_info=True)

    def _record_error(self, exc: OSError) -> FinSenseError:
        reason = exc.strerror or str(exc)
        return FinSenseError(
            f"{self._record_path}: cannot record the episodes logged to {self.name} ({reason}); "
            "fix the cause (free space, permissions) and run the same command to resume"
        )

    # -- the backend -------------------------------------------------------------------------
    def _open(
        self, run_dir: Path, run_id: str | None, last_episode: int, config: dict[str, Any]
    ) -> tuple[str, int]:
        """Open run ``run_id`` (None: a new run) as ``self._run``; return its id and the highest
        episode it holds (``last_episode`` is the record's; a new run holds none)."""
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        """What the record file says about where the run is, besides its id."""
        return {}

    def _log(self, episode: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class WandbLogger(_TrackedRunLogger):
    """Logs each episode to a Weights & Biases run; a resumed FinSense run continues it.

    The run's files are under ``RUN_DIR/wandb/``. Offline (``mode: offline`` or
    ``WANDB_MODE=offline``), each session of the run is an ``offline-run-*`` folder with the same
    run id; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads them in order as one run.

    Args:
        project: the W&B project.
        entity: the user or team (None: your default entity).
        mode: ``online``, ``offline`` or ``disabled``; None: ``WANDB_MODE``, else W&B's default.
        group: groups runs in the UI (e.g. the seeds of one experiment).
        tags: the run's tags.
        name: the run's display name (None: W&B picks one).

    Raises:
        ConfigError: wandb is not installed (one line saying how to install it).
    """

    name = "wandb"

    def __init__(
        self,
        project: str = "finsense",
        entity: str | None = None,
        mode: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        _require_extra("wandb", "wandb")
        super().__init__()
        self.project = project
        self.entity = entity
        self.mode = mode
        self.group = group
        self.tags = list(tags) if tags is not None else None
        self.run_name = name

    def _open(
        self, run_dir: Path, run_id: str | None, last_episode: int, config: dict[str, Any]
    ) -> tuple[str, int]:
        import wandb

        kwargs: dict[str, Any] = {
            "project": self.project,
            "entity": self.entity,
            "group": self.group,
            "tags": self.tags,
            "name": self.run_name,
            "dir": str(run_dir),
            # This run only: other runs of the process (and ``wandb.run``) are left alone, and an
            # unfinished run is never handed back in place of the one asked for.
            "reinit": "create_new",
        }
        if self.mode is not None:
            kwargs["mode"] = self.mode
        if run_id is not None:
            # "allow": the run continues where it is known (online: W&B's server); otherwise
            # (an offline run never synced) a run with this id is created.
            kwargs.update(id=run_id, resume="allow")
        try:
            self._run = wandb.init(**kwargs)
            self._run.config.update(config, allow_val_change=True)
        except wandb.Error as exc:
            self._close_quietly()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FinSenseError(
                f"logger=wandb: {first} (WANDB_MODE=offline logs without an account)"
            ) from None
        return str(self._run.id), last_episode

    def _describe(self) -> dict[str, Any]:
        return {"project": self.project, "entity": self.entity}

    def _log(self, episode: int, metrics: dict[str, float]) -> None:
        # commit: the episode's row is sent now; with only ``step`` W&B holds a row open until a
        # later step arrives, and a killed process would lose its last episode.
        self._run.log(metrics, step=episode, commit=True)

    def _close(self) -> None:
        self._run.finish()


class MLflowLogger(_TrackedRunLogger):
    """Logs each episode to an MLflow run; a resumed FinSense run continues it.

    Through an ``MlflowClient`` bound to the tracking URI: MLflow's global state (the active run,
    ``mlflow.set_tracking_uri``) is left alone. The run config is logged as params, flattened
    (``agent.learning_rate``); MLflow params cannot change, so on resume only new keys are added
    (a changed one, e.g. ``episodes`` raised to extend the run, keeps its first value and is named
    in the log). On resume the episodes the run holds are read back from MLflow as well, so an
    episode logged just before a crash (after MLflow had it, before the record was written) is not
    logged twice.

    Args:
        tracking_uri: where runs are stored (``sqlite:///mlflow.db``, ``http://host:5000``, ...);
            None: ``MLFLOW_TRACKING_URI``, else MLflow's default (``sqlite:///mlflow.db`` in the
            working directory since MLflow 3; ``./mlruns`` before).
        experiment_name: the experiment, created if missing.
        run_name: the run's name (None: MLflow picks one).

    Raises:
        ConfigError: mlflow is not installed (one line saying how to install it).
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "finsense",
        run_name: str | None = None,
    ) -> None:
        _require_extra("mlflow", "mlflow")
        super().__init__()
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self._client: Any = None
        self._uri: str | None = None
        self._experiment_id: str | None = None

    def _open(
        self, run_dir: Path, run_id: str | None, last_episode: int, config: dict[str, Any]
    ) -> tuple[str, int]:
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            self._uri = self.tracking_uri or mlflow.get_tracking_uri()
            self._client = MlflowClient(tracking_uri=self._uri)
            run = self._existing_run(run_id) if run_id is not None else None
            if run is None:
                self._experiment_id = self._experiment()
                run = self._client.create_run(
                    self._experiment_id,
                    run_name=self.run_name,
                    tags={"finsense.run_dir": str(Path(run_dir).resolve())},
                )
                last_episode = 0
            else:
                self._experiment_id = run.info.experiment_id
                last_episode = max(last_episode, self._last_step(run))
                self._client.update_run(run.info.run_id, status="RUNNING")
            self._run = run
            self._log_params(run, config)
        except MlflowException as exc:
            self._close_quietly()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FinSenseError(f"logger=mlflow ({self._uri}): {first}") from None
        except ImportError as exc:  # a store's own packages (sqlite: sqlalchemy, alembic)
            self._close_quietly()
            raise FinSenseError(
                f"logger=mlflow ({self._uri}): {exc}; pip install 'finsense[mlflow]'"
            ) from None
        return str(run.info.run_id), last_episode

    def _existing_run(self, run_id: str) -> Any:
        """Run ``run_id``, or None (logged) when this store does not have it any more."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            log.warning(
                "mlflow: run %s not found in %s (%s); starting a new run",
                run_id,
                self._uri,
                str(exc).splitlines()[0] if str(exc) else exc,
            )
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("mlflow: run %s was deleted; starting a new run", run_id)
            return None
        return run

    def _experiment(self) -> str:
        """The id of ``experiment_name``, created if missing (by another job meanwhile: fine)."""
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(self.experiment_name)
        if found is None:
            try:
                return str(self._client.create_experiment(self.experiment_name))
            except MlflowException:
                found = self._client.get_experiment_by_name(self.experiment_name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise FinSenseError(
                f"logger=mlflow: experiment {self.experiment_name!r} is deleted in {self._uri}; "
                "restore it (mlflow experiments restore) or choose another "
                "logger.mlflow.experiment_name"
            )
        return str(found.experiment_id)

    def _last_step(self, run: Any) -> int:
        """The highest step any metric of ``run`` has (0: none)."""
        last = 0
        for key in run.data.metrics:
            for metric in self._client.get_metric_history(run.info.run_id, key):
                last = max(last, int(metric.step))
        return last

    def _log_params(self, run: Any, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils import validation

        # MLflow's limits (a value: 6000 characters in recent versions, 500 in old ones).
        max_value = int(getattr(validation, "MAX_PARAM_VAL_LENGTH", 500))
        max_key = int(getattr(validation, "MAX_ENTITY_KEY_LENGTH", 250))
        existing = dict(run.data.params)
        params, changed = [], []
        for key, value in _flatten(config):
            if len(key) > max_key:
                log.warning(
                    "mlflow: param %s… not logged (keys are at most %d characters)",
                    key[:40],
                    max_key,
                )
                continue
            text = value[:max_value]
            if key not in existing:
                params.append(Param(key, text))
            elif existing[key] != text:
                changed.append(key)
        for chunk in _chunks(params, 100):  # MLflow's limit of params per batch
            self._client.log_batch(run.info.run_id, params=chunk)
        if changed:
            log.info(
                "mlflow: params keep their first values (MLflow params cannot change): %s",
                ", ".join(changed),
            )

    def _describe(self) -> dict[str, Any]:
        return {"tracking_uri": self._uri, "experiment_id": self._experiment_id}

    def _log(self, episode: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, episode) for key, value in metrics.items()]
        for chunk in _chunks(batch, 1000):  # MLflow's limit of metrics per batch
            self._client.log_batch(self._run.info.run_id, metrics=chunk)

    def _close(self) -> None:
        self._client.set_terminated(self._run.info.run_id, "FINISHED")


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, str(value))`` for every leaf of a nested config."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, str(value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
