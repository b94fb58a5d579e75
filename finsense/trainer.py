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
from finsense.errors import CheckpointError, ConfigError
from finsense.runs import relative_to_run

log = logging.getLogger(__name__)

#: Config keys whose change makes a saved state unusable (network shape, observation size, buffer).
STRUCTURAL_KEYS: tuple[str, ...] = (
    "agent.name",
    "agent.hidden_sizes",
    "agent.dueling",
    "agent.buffer_size",
    "env.window_size",
    "env.allow_short",
)


class Agent(Protocol):
    """What the trainer needs from an agent (``finsense.agents.DQNAgent`` provides it)."""

    @property
    def epsilon(self) -> float: ...

    @property
    def steps(self) -> int: ...

    def act(self, obs: np.ndarray, explore: bool = True) -> int: ...

    def observe(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> float | None: ...

    def end_episode(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainSettings:
    """How long to train and when to save; plain values taken from the run config."""

    episodes: int
    seed: int = 0
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
    chained_handler: Callable[[int, FrameType | None], Any] | None = None  # e.g. submitit's requeue
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


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare two plain run configs; return (structural, other) changes as readable lines."""
    structural: list[str] = []
    other: list[str] = []
    from finsense.config import non_experiment_keys

    not_experiment = set(non_experiment_keys())  # how long or how to run, not what is trained
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    for key in sorted(set(flat_saved) | set(flat_current)):
        if key in not_experiment or key.startswith("hydra."):
            continue
        old, new = flat_saved.get(key, "<absent>"), flat_current.get(key, "<absent>")
        if old == new:
            continue
        line = f"{key}: {old!r} -> {new!r}"
        (structural if key in STRUCTURAL_KEYS else other).append(line)
    return structural, other


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a metrics.csv row (what checkpoints record and rank by)."""
    return {k: v for k, v in row.items() if k not in ("episode", "epsilon", "steps", "seconds")}


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
        env: a ``finsense/Trading-v0`` env (anything whose final step's info holds
            ``episode_metrics``).
        agent: the learner; its ``state_dict()`` must hold ``policy`` (small) and ``training``
            (replay buffer, optimizer, RNGs) parts.
        manager: the checkpoint store of this run's ``models/`` directory.
        run_dir: the run directory (``metrics.csv`` lives there).
        settings: episodes, seed and save policy.
        config: the plain run config, recorded with each checkpoint to detect drift on resume.
        on_episode: optional callback ``(episode, row)`` after each episode (loggers, evaluation).
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

    # -- resume -----------------------------------------------------------------------------
    def find_checkpoint(self, resume: str) -> CheckpointInfo | Path | None:
        """The checkpoint ``resume`` (auto | never | PATH) names; ``never`` archives the history."""
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
            structural, other = config_drift(saved_config, self.config)
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

    # -- the loop ---------------------------------------------------------------------------
    def run(self, resume: str = "auto") -> TrainResult:
        """Resume per ``resume`` and train to ``settings.episodes``; save per the save policy."""
        total = self.settings.episodes
        self.manager.check_format()
        checkpoint = self.find_checkpoint(resume)
        start = 0
        if checkpoint is not None:
            start = self.restore(checkpoint)
            where = checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint
            verb = "Auto-resuming" if resume == "auto" else "Resuming"
            log.info("%s from episode %d: %s", verb, start, self._rel(where))
        result = TrainResult(start, start, total, metric_name=self.manager.metric_name)
        if start >= total:
            log.info("Training already complete! (%d/%d episodes)", start, total)
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
            log.info("Starting training: %d episodes in %s", total, self.run_dir)
        self.metrics_log.truncate_after(start)

        interrupt = GracefulInterrupt()
        last_save = time.monotonic()
        with interrupt.installed(), self._progress(start, total) as progress:
            for episode in range(start + 1, total + 1):
                started = time.perf_counter()
                metrics = self.run_episode(episode)
                row = self._row(episode, metrics, time.perf_counter() - started)
                if self.on_episode is not None:
                    row.update(self.on_episode(episode, row) or {})
                self.metrics_log.append(row)
                result.history.append(row)
                result.last_episode = episode
                progress(episode, row)

                minutes = self.settings.save_every_minutes
                due = (
                    episode % self.settings.save_frequency == 0
                    or episode == total
                    or interrupt.signum is not None
                    or (minutes is not None and time.monotonic() - last_save >= 60.0 * minutes)
                )
                if not due and self.manager.improves(_metrics_of(row)):
                    self.save_best_episode(episode, row)  # a new best off the grid: kept at once
                # Read once: a signal from here on is answered after the next episode.
                stop = interrupt.signum
                if due or stop is not None:
                    result.last_checkpoint = self.save_episode(episode, row)
                    last_save = time.monotonic()
                if stop is not None:
                    result.interrupted_by = stop
                    result.chained_handler = interrupt.chained_handler()
                    log.warning(
                        "Stopped by %s after episode %d; checkpoint saved: %s",
                        signal.Signals(stop).name,
                        episode,
                        self._rel(result.last_checkpoint or self.run_dir),
                    )
                    break
        if result.interrupted_by is None and result.last_episode == total:
            # A finished run that taught the agent nothing would otherwise pass unnoticed; what
            # counts as "nothing" belongs to the algorithm, so the agent says (if it can).
            for warning in getattr(self.agent, "training_warnings", lambda: [])():
                log.warning("%s", warning)
        result.best = self.manager.best()
        return result

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
        return dict(info["episode_metrics"])

    def save_episode(self, episode: int, row: dict[str, Any]) -> Path:
        """Write this episode's checkpoint (policy + training state + metadata)."""
        state = self.agent.state_dict()
        info = self.manager.save(
            episode,
            {"policy": state["policy"]},
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
            {"policy": state["policy"]},
            self._metadata(row),
            training_state=state["training"],
        )
        if info is not None:
            log.debug("episode %d is the new best model", episode)

    def _metadata(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "metrics": _metrics_of(row),
            "epsilon": row["epsilon"],
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
        row["epsilon"] = round(float(self.agent.epsilon), 6)
        row["steps"] = int(self.agent.steps)
        row["seconds"] = round(seconds, 3)
        return row

    @contextmanager
    def _progress(self, start: int, total: int) -> Iterator[Callable[[int, dict[str, Any]], None]]:
        use_bar = self.settings.progress == "bar" or (
            self.settings.progress == "auto" and sys.stdout.isatty()
        )
        metric = self.manager.metric_name

        def line(episode: int, row: dict[str, Any]) -> str:
            value = row.get(metric, math.nan)
            shown = f"{value:,.2f}" if isinstance(value, int | float) else str(value)
            profit = ""
            if metric != "total_profit":
                profit = f"total_profit={row.get('total_profit', math.nan):,.2f}  "
            return (
                f"Episode {episode}/{total}  {metric}={shown}  {profit}"
                f"epsilon={row['epsilon']:.3f}  steps={row['steps']}  ({row['seconds']:.2f}s)"
            )

        if not use_bar:
            yield lambda episode, row: log.info(line(episode, row))
            return
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="ep", dynamic_ncols=True, file=sys.stdout)
        try:

            def update(episode: int, row: dict[str, Any]) -> None:
                _file_only(line(episode, row))
                bar.set_postfix(
                    profit=f"{row.get('total_profit', math.nan):,.0f}", eps=f"{row['epsilon']:.3f}"
                )
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
