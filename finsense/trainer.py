"""The episode loop: act, learn, log, and ask the checkpoint store to save.

Reads top to bottom like CleanRL's loop. The trainer knows the agent's vocabulary (``act``,
``observe``, ``end_episode``, ``state_dict``) and the store's (``save``, ``latest``, ``load``,
``archive``); it knows nothing about Hydra. Everything that decides *where* and *what* is passed in.

Exact resume rests on three facts: the agent's state dict holds every random generator it uses;
each episode's env reset is seeded from ``(seed, episode)`` alone, so the env needs no saved state;
and saving draws no random numbers. A run restored from episode N therefore replays episodes N+1...
exactly as the run that never stopped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np

from finsense.checkpoint import CheckpointInfo, CheckpointManager, metadata_path, write_bytes_atomic
from finsense.checkpoint.mirrored import MirroredCheckpointManager
from finsense.checkpoint.policies import SavePolicy
from finsense.errors import CheckpointError, ConfigError
from finsense.runs import relative_to_run

log = logging.getLogger(__name__)


class Agent(Protocol):
    """What the trainer, evaluation, status and the store need from an agent, and nothing more.

    ``finsense.agents.DQNAgent`` provides it; an algorithm of one's own provides the same.
    """

    #: ``agent.*`` config keys (a key covers its sub-keys) whose change a saved state cannot
    #: follow (the network's shape, a buffer's capacity): resuming across such a change is
    #: refused; other changes are logged as warnings.
    resume_keys: tuple[str, ...]

    @property
    def steps(self) -> int:
        """Env steps observed over the agent's whole life (``max_steps`` counts these)."""
        ...

    def act(self, obs: np.ndarray, explore: bool = True) -> int:
        """The action for ``obs``; ``explore=False`` is the greedy policy, drawing no random
        numbers (so evaluating mid-training does not change the course of training)."""
        ...

    def observe(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> float | None:
        """Take in one transition (and learn when due)."""
        ...

    def end_episode(self) -> None:
        """An episode ended."""
        ...

    def episode_metrics(self) -> dict[str, float]:
        """Values the agent adds to each episode's row (DQN: ``epsilon``); also written at the
        top level of each checkpoint's JSON."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """``{"policy": ..., "training": ...}``: the policy alone (small; what evaluation
        loads) and the rest of the training state (buffers, optimizer, generators)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly (refusing a state of another shape)."""
        ...


class Logger(Protocol):
    """Where each episode's row goes besides the console: ``metrics.csv`` (:class:`MetricsLog`,
    always), TensorBoard, W&B, MLflow (:mod:`finsense.loggers`)."""

    def start(self, run_dir: Path, start_episode: int, config: dict[str, Any]) -> None:
        """Training (re)starts after ``start_episode`` (0: a fresh history)."""
        ...

    def log(self, episode: int, row: dict[str, Any]) -> None:
        """One episode's row."""
        ...

    def close(self) -> None:
        """Flush and release (idempotent)."""
        ...


@dataclass(frozen=True)
class TrainSettings:
    """How long to train and when to save; plain values taken from the run config."""

    episodes: int
    seed: int = 0
    max_steps: int | None = None  # also end with the episode in which the agent's steps reach it
    save_frequency: int = 10
    save_every_minutes: float | None = None
    progress: str = "auto"  # auto | bar | log


@dataclass
class TrainResult:
    """What a finished (or interrupted) call to :meth:`Trainer.run` reports."""

    start_episode: int  # the episode training resumed after (0 for a fresh start)
    last_episode: int  # the last episode completed and saved
    episodes: int  # the target total
    already_complete: bool = False
    interrupted_by: int | None = None  # the signal number that stopped training, if any
    finished: bool = False  # the budget (episodes or max_steps) is spent
    last_checkpoint: Path | None = None
    best: CheckpointInfo | None = None
    metric_name: str = "total_profit"
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_value(self) -> float:
        """The best checkpointed ``metric_name`` value (nan when there is none)."""
        if self.best is None:
            return math.nan
        value = self.best.metadata.get("metric_value")
        return math.nan if value is None else float(value)


def seed_everything(seed: int) -> None:
    """Seed the global python, numpy and torch generators, so a fresh run's whole state is a
    function of its seed (the agent saves and restores them; resumed runs continue them)."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def episode_seed(seed: int, episode: int) -> int:
    """The env reset seed of ``episode``: a function of the run seed and the episode alone."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class GracefulInterrupt:
    """Turns SIGINT/SIGTERM/SIGHUP (and SIGUSR1, what SLURM sends before a timeout) into a stop
    request.

    The first signal lets the episode in progress finish and be saved; a second Ctrl+C exits at once
    (the last checkpoint on disk stays valid: saves are atomic). SIGHUP is a dropped connection
    (SSH without ``nohup``): the terminal is gone, so the console is pointed at /dev/null first
    (writes to a hung-up terminal fail) and the run's log file says what happened. A SIGHUP that
    is ignored when training starts (``nohup``) stays ignored.
    """

    #: SIGUSR1 is what SLURM sends before a timeout; SIGUSR2 is submitit's preemption signal.
    SIGNALS = tuple(
        getattr(signal, name)
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
        if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def chained_handler(self) -> Callable[[int, FrameType | None], Any] | None:
        """The handler that was installed before ours for the signal received, if it is Python code.

        A cluster launcher (submitit) installs one to requeue the job; after the checkpoint is
        saved, calling it hands the job back to the launcher, which requeues it.
        """
        if self.signum is None:
            return None
        previous = self._previous.get(self.signum)
        if callable(previous) and previous is not signal.default_int_handler:
            return previous
        return None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            sys.stderr.write(
                "\nSecond interrupt: exiting now; the last checkpoint on disk is intact.\n"
            )
            sys.stderr.flush()
            os._exit(130)
        if self.signum is None and signum == getattr(signal, "SIGHUP", None):
            from finsense.cli import point_at_devnull

            for stream in (sys.stdout, sys.stderr):
                with suppress(OSError, ValueError):
                    stream.flush()
                point_at_devnull(stream.fileno())
        self.signum = signum
        try:
            sys.stderr.write(
                f"\n{signal.Signals(signum).name} received: finishing this episode and saving "
                "(press Ctrl+C again to exit at once)\n"
            )
            sys.stderr.flush()
        except OSError:
            pass  # the console is gone; the log file records the stop

    @contextmanager
    def installed(self) -> Iterator[GracefulInterrupt]:
        """Install the handlers for the duration of the block (main thread only)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in self.SIGNALS:
            if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # nohup: the user asked to outlive the terminal
            self._previous[int(sig)] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)


class MetricsLog:
    """``metrics.csv``: one row per episode, always matching the checkpoints on disk.

    On resume the rows after the restored episode are dropped (they belong to a future that the
    restored run is about to relive), and a line cut by a crash is discarded. A write that fails
    (no space left, a read-only disk) is one :class:`CheckpointError` line; the file keeps its
    complete rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fields: list[str] | None = None

    # The logger interface: metrics.csv is a logger like the others, always present.
    def start(self, run_dir: Path, start_episode: int, config: dict[str, Any]) -> None:
        """Training (re)starts after ``start_episode``: drop the rows after it."""
        self.truncate_after(start_episode)

    def log(self, episode: int, row: dict[str, Any]) -> None:
        """Append ``row``."""
        self.append(row)

    def close(self) -> None:
        """Nothing is held open (each row is one append)."""

    def truncate_after(self, episode: int) -> None:
        """Keep only complete rows with ``episode <= episode`` (rewritten atomically)."""
        if not self.path.exists():
            return
        try:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames
                rows = []
                for row in reader:
                    try:
                        ep = int(row["episode"])
                    except (TypeError, ValueError, KeyError):
                        continue
                    if ep <= episode and None not in row.values() and None not in row:
                        rows.append(row)
            if not fields or not rows:
                self.path.unlink()
                return
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            write_bytes_atomic(self.path, text.getvalue().encode("utf-8"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise self._error("rewrite", exc) from None
        self._fields = list(fields)

    def append(self, row: dict[str, Any]) -> None:
        """Append one episode's row (header first when the file is new)."""
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            if self._fields is None:
                if new:
                    self._fields = list(row)
                else:
                    with self.path.open(newline="") as f:
                        self._fields = next(csv.reader(f), list(row))
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self._fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            # One write of the whole row: a failure leaves at most a cut last line, which the
            # next resume drops.
            with self.path.open("a", newline="") as f:
                f.write(text.getvalue())
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise self._error("append to", exc) from None

    def _error(self, verb: str, exc: BaseException) -> CheckpointError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CheckpointError(
            f"{self.path}: cannot {verb} the per-episode metrics ({reason}); the checkpoints "
            "are intact: fix the cause (free space, permissions) and run the same command to "
            "resume"
        )


def config_drift(
    saved: dict[str, Any], current: dict[str, Any], resume_keys: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Compare two plain run configs; return (refused, other) changes as readable lines.

    ``resume_keys`` are the keys whose change a saved state cannot follow, as the agent and the
    env declare them (``agent.network`` covers every ``agent.network.*`` key); keys left out of
    run-directory names (how long or how to run, not what is trained) are not compared.
    """
    from finsense.config import non_experiment_keys

    refused: list[str] = []
    other: list[str] = []
    not_experiment = set(non_experiment_keys())
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    for key in sorted(set(flat_saved) | set(flat_current)):
        if key in not_experiment or key.startswith(("hydra.", "logger.")):
            continue
        old, new = flat_saved.get(key, "<absent>"), flat_current.get(key, "<absent>")
        if old == new:
            continue
        line = f"{key}: {old!r} -> {new!r}"
        structural = any(key == k or key.startswith(k + ".") for k in resume_keys)
        (refused if structural else other).append(line)
    return refused, other


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


#: Row keys that are not the env's episode metrics (the agent's own values are left out too).
_ROW_KEYS = frozenset({"episode", "steps", "seconds"})


def resume_path(resume: str, run_dir: Path) -> Path:
    """The checkpoint file ``resume=PATH`` names: from the working directory, else from the run
    directory (the guide's ``--resume models/model_ep200.pt``).

    Raises:
        CheckpointError: no such file.
    """
    path = Path(resume).expanduser()
    if not path.exists() and not path.is_absolute() and (run_dir / path).exists():
        path = run_dir / path
    if not path.exists():
        raise CheckpointError(
            f"resume={resume}: no such checkpoint file; "
            "use resume=auto or a models/model_epN.pt path"
        )
    json_path = metadata_path(path)
    if not json_path.is_file():
        raise CheckpointError(
            f"resume={resume}: no {json_path.name} beside it; resuming needs the checkpoint's "
            "JSON (episode, checksums): name a models/model_epN.pt that has one"
        )
    return path


class Trainer:
    """Runs episodes ``start+1 .. episodes`` of one run and keeps its checkpoints.

    Args:
        env: a gymnasium env whose final step's info holds ``episode_metrics`` (a
            ``finsense/Trading-v0`` env, or any env wrapped in
            :class:`finsense.envs.gym.EpisodeMetrics`).
        agent: the learner (:class:`Agent`).
        manager: the checkpoint store of this run's ``models/`` directory.
        run_dir: the run directory (``metrics.csv`` lives there).
        settings: episodes, seed and save policy.
        config: the plain run config, recorded with each checkpoint to detect drift on resume.
        loggers: where rows go besides ``metrics.csv`` (always written, first).
        on_episode: optional callback ``(episode, row)`` after each episode, before the row is
            logged; what it returns joins the row (the test-split evaluation).
        on_start: optional callback once the command is known to train (not refused, not already
            complete), before anything in the run directory changes for it.
    """

    def __init__(
        self,
        env: Any,
        agent: Agent,
        manager: CheckpointManager,
        run_dir: Path,
        settings: TrainSettings,
        config: dict[str, Any] | None = None,
        loggers: list[Logger] | None = None,
        on_episode: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.agent = agent
        self.manager = manager
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.config = config or {}
        self.on_episode = on_episode
        self.on_start = on_start
        self.metrics_log = MetricsLog(self.run_dir / "metrics.csv")
        self.loggers: list[Logger] = [self.metrics_log, *(loggers or [])]
        self._interrupt = GracefulInterrupt()

    # -- resume -----------------------------------------------------------------------------
    def find_checkpoint(self, resume: str | Path) -> CheckpointInfo | Path | None:
        """The checkpoint ``resume`` (auto | never | PATH) names; ``never`` archives the history.

        A :class:`Path` is a checkpoint already resolved (:func:`resume_path`) and is taken as
        it is; a string path is resolved here.
        """
        if isinstance(resume, Path):
            return resume
        if resume == "never":
            archived = self.manager.archive(move=(self.metrics_log.path,))
            if archived is not None:
                log.warning("resume=never: previous history moved to %s", self._rel(archived))
            return None
        if resume == "auto":
            return self.manager.latest(resumable=True)
        return resume_path(resume, self.run_dir)

    def _set_aside_other_future(self, checkpoint: Path, start: int) -> None:
        """Before training on from an explicitly named checkpoint, archive what it would mix with.

        Named from this run's ``models/``: the checkpoints after its episode (and a best model
        from after it) belong to a future this run abandons. Named from elsewhere: this run's
        whole history is another line of training. Either way it moves to ``models/archive/``
        with the matching ``metrics.csv``, never deleted, so ``resume=auto`` later finds only
        checkpoints of the history being trained now.
        """
        models = self.manager.models_dir.resolve()
        ours = checkpoint.resolve().parent == models
        archived = self.manager.archive(
            after=start if ours else None, copy=(self.metrics_log.path,)
        )
        if archived is None:
            return
        what = f"checkpoints after episode {start}" if ours else "this run's previous history"
        log.warning("resume=%s: %s moved to %s", self._rel(checkpoint), what, self._rel(archived))

    def restore(self, checkpoint: CheckpointInfo | Path) -> int:
        """Load a checkpoint into the agent (after the drift check); return its episode."""
        state, training_state, metadata = self.manager.load(checkpoint)
        where = checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint
        if training_state is None or not isinstance(metadata.get("episode"), int):
            raise CheckpointError(
                f"{where}: holds no training state (replay buffer, optimizer, counters), so "
                "training cannot resume from it exactly; name a models/model_epN.pt instead"
            )
        saved_config = metadata.get("config") or {}
        if saved_config and self.config:
            structural, other = config_drift(saved_config, self.config, self.resume_keys())
            if structural:
                raise ConfigError(
                    "the config changed in ways the checkpoint cannot follow: "
                    + "; ".join(structural)
                    + ". Use resume=never to start this run afresh (its history is archived) "
                    "or name=<new> to start a new run."
                )
            if other:
                log.warning("changed since the checkpoint: %s", "; ".join(other))
        self.agent.load_state_dict({"policy": state["policy"], "training": training_state})
        return int(metadata["episode"])

    def resume_keys(self) -> tuple[str, ...]:
        """The config keys a saved state cannot follow a change of, as the agent and the env
        declare them (``resume_keys`` attributes), prefixed ``agent.`` and ``env.``."""
        env_keys = getattr(getattr(self.env, "unwrapped", self.env), "resume_keys", ())
        agent_keys = getattr(self.agent, "resume_keys", ())
        return tuple(f"agent.{k}" for k in agent_keys) + tuple(f"env.{k}" for k in env_keys)

    def _done(self, episode: int) -> bool:
        """Whether the budget is spent after ``episode``: ``episodes``, or ``max_steps``."""
        limit = self.settings.max_steps
        return episode >= self.settings.episodes or (
            limit is not None and int(self.agent.steps) >= limit
        )

    # -- the loop ---------------------------------------------------------------------------
    def run(self, resume: str | Path = "auto") -> TrainResult:
        """Resume per ``resume`` and train to ``settings.episodes``; save per the save policy."""
        total = self.settings.episodes
        self.manager.check_format()
        checkpoint = self.find_checkpoint(resume)
        start = 0
        if checkpoint is not None:
            start = self.restore(checkpoint)
            where = checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint
            verb = "Auto-resuming" if resume == "auto" else "Resuming"
            shown = self._rel(where)
            if isinstance(self.manager, MirroredCheckpointManager):  # pulled from the remote?
                shown = self.manager.origin(where) or shown
            log.info("%s from episode %d: %s", verb, start, shown)
        result = TrainResult(start, start, total, metric_name=self.manager.metric_name)
        if start > 0 and self._done(start):
            log.info("Training already complete! (%s)", self._budget(start))
            result.already_complete = True
            result.last_checkpoint = (
                checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint
            )
            result.best = self.manager.best()
            return result
        if self.on_start is not None:
            self.on_start()
        if isinstance(checkpoint, Path):
            self._set_aside_other_future(checkpoint, start)
        if start > 0:
            log.info("Resuming training from episode %d/%d", start + 1, total)
        else:
            steps = f" or {self.settings.max_steps:,} env steps" if self.settings.max_steps else ""
            log.info("Starting training: %d episodes%s in %s", total, steps, self.run_dir)
        try:
            for logger in self.loggers:
                logger.start(self.run_dir, start, self.config)
            self._loop(start, total, result)
        finally:
            for logger in self.loggers:
                logger.close()
        result.finished = result.interrupted_by is None and self._done(result.last_episode)
        if result.interrupted_by is not None:
            self._hand_over(result.interrupted_by)
        if result.finished:
            # A finished run that taught the agent nothing would otherwise pass unnoticed; what
            # counts as "nothing" belongs to the algorithm, so the agent says (if it can).
            for warning in getattr(self.agent, "training_warnings", lambda: [])():
                log.warning("%s", warning)
        result.best = self.manager.best()
        return result

    def _loop(self, start: int, total: int, result: TrainResult) -> None:
        """Episodes ``start + 1 ..`` until the budget is spent or a signal asks to stop."""
        interrupt = self._interrupt = GracefulInterrupt()
        saving = SavePolicy(self.settings.save_frequency, self.settings.save_every_minutes)
        last_save = time.monotonic()
        with interrupt.installed(), self._progress(start, total) as progress:
            for episode in range(start + 1, total + 1):
                started = time.perf_counter()
                metrics = self.run_episode(episode)
                row = self._row(episode, metrics, time.perf_counter() - started)
                if self.on_episode is not None:
                    row.update(self.on_episode(episode, row) or {})
                for logger in self.loggers:
                    logger.log(episode, row)
                result.history.append(row)
                result.last_episode = episode
                progress(episode, row)

                finished = self._done(episode)
                due = saving.due(
                    episode,
                    final=finished,
                    signalled=interrupt.signum is not None,
                    seconds_since_save=time.monotonic() - last_save,
                )
                if not due and self.manager.improves(self._metrics_of(row)):
                    self.save_best_episode(episode, row)  # a new best off the grid: kept at once
                # Read once: a signal from here on is answered after the next episode.
                stop = interrupt.signum
                if due or stop is not None:
                    result.last_checkpoint = self.save_episode(episode, row)
                    last_save = time.monotonic()
                if stop is not None:
                    result.interrupted_by = stop
                    log.warning(
                        "Stopped by %s after episode %d; checkpoint saved: %s",
                        signal.Signals(stop).name,
                        episode,
                        self._rel(result.last_checkpoint or self.run_dir),
                    )
                    break
                if finished:
                    break

    def _hand_over(self, signum: int) -> None:
        """After the stop's checkpoint is saved, call the handler a launcher installed before
        ours (submitit requeues a preempted or timed-out SLURM job this way); the requeued job
        auto-resumes."""
        handler = self._interrupt.chained_handler()
        if handler is None:
            return
        log.info("Checkpoint saved; handing the stop over to the launcher's handler")
        handler(signum, None)

    def _budget(self, episode: int) -> str:
        steps = f", {int(self.agent.steps):,} env steps" if self.settings.max_steps else ""
        limit = f" of max_steps={self.settings.max_steps:,}" if self.settings.max_steps else ""
        return f"{episode}/{self.settings.episodes} episodes{steps}{limit}"

    def run_episode(self, episode: int) -> dict[str, Any]:
        """One episode: act, step, store and learn until the env ends it; return its metrics."""
        env, agent = self.env, self.agent
        obs, _ = env.reset(seed=episode_seed(self.settings.seed, episode))
        info: dict[str, Any] = {}
        done = False
        while not done:
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            agent.observe(obs, action, float(reward), next_obs, bool(terminated))
            obs = next_obs
            done = terminated or truncated
        agent.end_episode()
        if "episode_metrics" not in info:
            raise ConfigError(
                f"env {type(env.unwrapped).__name__} reports no info['episode_metrics'] at the "
                "end of an episode; wrap it in finsense.envs.gym.EpisodeMetrics (env=gym does)"
            )
        return dict(info["episode_metrics"])

    def save_episode(self, episode: int, row: dict[str, Any]) -> Path:
        """Write this episode's checkpoint (policy + training state + metadata)."""
        state = self.agent.state_dict()
        info = self.manager.save(
            episode,
            {"policy": self.policy_part(state["policy"])},
            self._metadata(row),
            training_state=state["training"],
        )
        log.debug("saved %s", self._rel(info.path))
        return info.path

    def save_best_episode(self, episode: int, row: dict[str, Any]) -> None:
        """An episode off the save grid beat the best: make it the best model at once.

        Full training state included, so ``resume=models/best_model.pt`` continues from it.
        """
        state = self.agent.state_dict()
        info = self.manager.update_best(
            episode,
            {"policy": self.policy_part(state["policy"])},
            self._metadata(row),
            training_state=state["training"],
        )
        if info is not None:
            log.debug("episode %d is the new best model", episode)

    def policy_part(self, policy: dict[str, Any]) -> dict[str, Any]:
        """The agent's policy state as a checkpoint keeps it: with the env's ``observation_spec``
        under ``"observation"`` when the env declares one (the trading env: its feature scale,
        window, shorting and execution), so the policy observes other prices as it was trained
        to (``finsense.evaluate RUN_DIR env.data.path=...``). Plain values only: the policy part
        still loads with ``torch.load(weights_only=True)``."""
        spec = getattr(getattr(self.env, "unwrapped", self.env), "observation_spec", None)
        return policy if spec is None else {**policy, "observation": dict(spec)}

    def _metrics_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """The env's metrics of a row (what checkpoints record and rank by)."""
        agent_keys = set(self._agent_metrics())
        return {k: v for k, v in row.items() if k not in _ROW_KEYS and k not in agent_keys}

    def _agent_metrics(self) -> dict[str, Any]:
        return dict(getattr(self.agent, "episode_metrics", dict)())

    def _metadata(self, row: dict[str, Any]) -> dict[str, Any]:
        agent_values = {k: row[k] for k in self._agent_metrics() if k in row}
        return {
            "metrics": self._metrics_of(row),
            **agent_values,  # DQN: the guide's "epsilon"
            "steps": row["steps"],
            "episodes_total": self.settings.episodes,
            "seed": self.settings.seed,
            # The learner that really ran (auto resolves to fast or autograd), when the agent has
            # such a choice.
            "learner": getattr(self.agent, "learner", None),
            "config": self.config,
        }

    # -- output -----------------------------------------------------------------------------
    def _row(self, episode: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
        row: dict[str, Any] = {"episode": episode}
        row.update(metrics)
        row.update(self._agent_metrics())
        row["steps"] = int(self.agent.steps)
        row["seconds"] = round(seconds, 3)
        return row

    @contextmanager
    def _progress(self, start: int, total: int) -> Iterator[Callable[[int, dict[str, Any]], None]]:
        use_bar = self.settings.progress == "bar" or (
            self.settings.progress == "auto" and sys.stdout.isatty()
        )
        metric = self.manager.metric_name
        # A held-out score (val_*, test_*) is measured every few episodes: the bar shows the
        # latest one with its episode, a log line only the episode's own.
        latest: dict[str, Any] = {}

        def shown(value: Any) -> str:
            return f"{value:,.2f}" if isinstance(value, int | float) else str(value)

        def scored(value: Any) -> bool:
            return not (isinstance(value, float) and math.isnan(value))

        def line(episode: int, row: dict[str, Any]) -> str:
            parts = []
            if metric not in row or scored(row[metric]):  # a missing metric shows as nan
                parts.append(f"{metric}={shown(row.get(metric, math.nan))}")
            if metric != "total_profit" and "total_profit" in row:
                parts.append(f"total_profit={shown(row['total_profit'])}")
            parts += [f"{k}={row[k]:.3f}" for k in self._agent_metrics() if k in row]
            parts.append(f"steps={row['steps']}")
            return f"Episode {episode}/{total}  " + "  ".join(parts) + f"  ({row['seconds']:.2f}s)"

        if not use_bar:
            yield lambda episode, row: log.info(line(episode, row))
            return
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="ep", dynamic_ncols=True, file=sys.stdout)
        try:

            def update(episode: int, row: dict[str, Any]) -> None:
                _file_only(line(episode, row))
                value = row.get(metric, math.nan)
                if scored(value):
                    latest.update(value=value, episode=episode)
                elif "value" in latest:
                    value = latest["value"]
                shown_value = f"{value:,.2f}"
                if "episode" in latest and latest["episode"] != episode:
                    shown_value += f" (ep {latest['episode']})"
                postfix = {metric: shown_value}
                if metric != "total_profit" and "total_profit" in row:
                    postfix["total_profit"] = f"{row['total_profit']:,.2f}"
                postfix.update({k: f"{row[k]:.3f}" for k in self._agent_metrics() if k in row})
                bar.set_postfix(postfix)
                bar.update(1)

            with _console_through_bar():
                yield update
        finally:
            bar.close()

    def _rel(self, path: Path) -> str:
        return relative_to_run(path, self.run_dir)


def _file_only(message: str) -> None:
    """Write an INFO line to the file handlers only (the progress bar owns the terminal)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _BarWriteHandler(logging.Handler):
    """Stands in for a console handler while the progress bar is drawn.

    Formats each record as the console handler would, then writes it with ``tqdm.write``: that
    clears the bar's line first and draws the bar again below the message. Written directly, a
    record would land after the bar's ``\r``-drawn text, on the bar's own line.
    """

    def __init__(self, console: logging.StreamHandler[Any]) -> None:
        super().__init__(console.level)
        self.console = console
        self.filters = console.filters  # the same list: a filter added later applies too

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.console.format(record), file=self.console.stream)
            self.console.flush()
        except Exception:
            self.console.handleError(record)  # its own policy (a reader gone: quiet)


@contextmanager
def _console_through_bar() -> Iterator[None]:
    """Route the root logger's console handlers through :class:`_BarWriteHandler` for the block.

    Console handlers are the stream handlers on ``sys.stdout``/``sys.stderr`` (the bar's terminal;
    tqdm treats the two as one), as Hydra's is; file handlers and any other handler (pytest's
    capture) are left alone. Each is swapped in place and swapped back on exit, so handlers others
    add or remove meanwhile are kept. (tqdm's ``logging_redirect_tqdm`` restores the whole handler
    list it saw on entry and drops the handlers' levels and filters.)
    """
    root = logging.getLogger()
    swaps: list[tuple[logging.StreamHandler[Any], _BarWriteHandler]] = []
    for i, handler in enumerate(root.handlers):
        if (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and handler.stream in (sys.stdout, sys.stderr)
        ):
            stand_in = _BarWriteHandler(handler)
            root.handlers[i] = stand_in
            swaps.append((handler, stand_in))
    try:
        yield
    finally:
        for handler, stand_in in swaps:
            if stand_in in root.handlers:
                root.handlers[root.handlers.index(stand_in)] = handler
