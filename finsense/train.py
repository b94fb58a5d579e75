"""``python -m finsense.train``: compose the config, find the run directory, build, train, report.

Every run lives in a directory derived from the overrides that define the experiment, so the same
command finds the same directory again and resumes where it stopped::

    python -m finsense.train                        # outputs/default
    python -m finsense.train seed=1 episodes=500    # outputs/seed=1 (episodes is not part of it)
    python -m finsense.train --multirun seed=0,1    # multirun/sweep/seed=0, multirun/sweep/seed=1

The user's guide flags ``--auto-resume``, ``--resume PATH|auto`` and ``--episodes N`` are accepted
as aliases of ``resume=auto``, ``resume=PATH`` and ``episodes=N``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import logging.handlers
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from finsense.config import register_configs, to_plain, validate
from finsense.errors import FinSenseError

log = logging.getLogger("finsense.train")

_MAX_DIRNAME = 200  # stay under the 255-byte name limit of common file systems


def run_dirname(name: str | None, override_dirname: str | None) -> str:
    """One stable, valid directory name for a run from its name and Hydra's ``override_dirname``.

    Empty overrides give ``default`` (never the parent directory itself); ``/`` in a value (a data
    path) is percent-encoded so the run stays one directory, not a nested tree; a very long name is
    shortened with a hash of the full one so it stays unique and stable.
    """
    parts = [p for p in (name, _experiment_overrides(override_dirname)) if p]
    raw = ",".join(parts) or "default"
    safe = quote(raw, safe="=,+-_.:@[]")
    if safe in (".", ".."):
        safe = safe.replace(".", "%2E")
    if len(safe) > _MAX_DIRNAME:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        safe = f"{safe[: _MAX_DIRNAME - 13]}~{digest}"
    return safe


#: Override key prefixes that never name a run: how a run is logged is not what it trains
#: (``logger=...`` itself is in ``exclude_keys``, which only matches whole keys).
_NOT_EXPERIMENT_PREFIXES = ("logger.",)


def _split_overrides(text: str) -> list[str]:
    """Hydra's ``override_dirname`` back into its overrides: split at the commas that are not
    inside brackets or quotes (``a=[1,2],b=3`` is two)."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item]


def _experiment_overrides(override_dirname: str | None) -> str | None:
    """``override_dirname`` without the overrides of keys that do not define the experiment."""
    if not override_dirname:
        return override_dirname
    kept = [
        item
        for item in _split_overrides(override_dirname)
        if not item.lstrip("+~").startswith(_NOT_EXPERIMENT_PREFIXES)
    ]
    return ",".join(kept)


def sweep_dirname(name: str | None) -> str:
    """The sweep directory under ``multirun/``: the run name, or ``sweep``."""
    return run_dirname(None, name) if name else "sweep"


def _register_resolvers() -> None:
    for resolver_name, fn in (
        ("finsense_run_dir", run_dirname),
        ("finsense_sweep_dir", sweep_dirname),
    ):
        if not OmegaConf.has_resolver(resolver_name):
            OmegaConf.register_new_resolver(resolver_name, fn)


_register_resolvers()
register_configs()

_ALIASES = {"--auto-resume": "resume=auto", "--verbose": "hydra.verbose=finsense"}
_VALUE_ALIASES = {"--resume": "resume", "--episodes": "episodes"}


def _override_value(value: str) -> str:
    """Quote a value for Hydra's override grammar when it holds special characters (a run
    directory's path has ``=`` and ``,`` in it)."""
    if any(c in value for c in "=,[]{}()'\" \\"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def _yaml_value(value: Any) -> str:
    """A YAML value as Hydra override text (numbers, booleans, null, strings, lists)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    return _override_value(str(value))


def config_file_overrides(path: str, later: list[str]) -> list[str]:
    """The run values of a YAML file (the guide's ``--config config.yaml``) as overrides.

    Nested sections become dotted keys (``checkpoints: {max_keep: 3}`` is
    ``checkpoints.max_keep=3``), so they are validated like command-line overrides, recorded in
    ``.hydra/overrides.yaml`` and, for keys that define the experiment, part of the run
    directory's name: two files that define different experiments never share a run. A group
    choice is a plain string (``env: googl``). Keys also given in ``later`` (the rest of the
    command line) are left to it.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    import yaml

    from finsense.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{line}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {path}: must hold key: value pairs, not a {type(data).__name__}"
        )
    given = {o.lstrip("+~").split("=", 1)[0] for o in later}
    out: list[str] = []

    def walk(node: dict[Any, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, name + ".")
            elif name not in given:
                out.append(f"{name}={_yaml_value(value)}")

    walk(data, "")
    return out


def translate_guide_flags(argv: list[str]) -> list[str]:
    """The guide's flags as overrides: ``--auto-resume``, ``--resume X``, ``--episodes N``,
    ``--verbose`` (debug logging for FinSense) and ``--config FILE`` (its run values, before
    the rest of the command line)."""
    out: list[str] = []
    files: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if arg in _ALIASES:
            out.append(_ALIASES[arg])
        elif key == "--config" and eq:
            files.append(value)
        elif arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
            i += 1
        elif key in _VALUE_ALIASES and eq:
            out.append(f"{_VALUE_ALIASES[key]}={_override_value(value)}")
        elif arg in _VALUE_ALIASES and i + 1 < len(argv):
            out.append(f"{_VALUE_ALIASES[arg]}={_override_value(argv[i + 1])}")
            i += 1
        else:
            out.append(arg)
        i += 1
    from_files = [o for path in files for o in config_file_overrides(path, out)]
    return from_files + out


class _ConsoleFormatter(logging.Formatter):
    """Plain messages on the console; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname}: {message}"
        return message


def _format_console() -> None:
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setFormatter(_ConsoleFormatter("%(message)s"))


#: What a run directory holds, by kind: a stray file or folder of the same name is refused.
_RUN_DIR_LAYOUT = {
    ".hydra": "directory",
    "logs": "directory",
    "models": "directory",
    "logs/finsense.log": "file",
    "metrics.csv": "file",
}


def check_run_dir_layout(run_dir: Path) -> None:
    """Refuse a run directory where FinSense's own entries are of the wrong kind (``logs`` a
    file, ``metrics.csv`` a folder), before anything in it changes.

    Raises:
        FinSenseError: one line naming the entry and what to do.
    """
    for name, kind in _RUN_DIR_LAYOUT.items():
        path = run_dir / name
        if not os.path.lexists(path):
            continue
        if path.is_dir() != (kind == "directory"):
            found = "a directory" if path.is_dir() else "a file"
            raise FinSenseError(
                f"{path} is {found}, where FinSense keeps its {name} {kind}; move it out of "
                "the run directory, then run the same command again"
            )


def check_output_path(path: str | os.PathLike[str]) -> None:
    """Refuse an output directory that cannot be made because a file stands in its way.

    Raises:
        FinSenseError: one line naming the file.
    """
    target = Path(path)
    for part in (*reversed(target.parents), target):
        if os.path.lexists(part) and not part.is_dir():
            raise FinSenseError(
                f"{part} is a file, so the run directory {target} cannot be made there; move "
                "the file away or choose another directory (hydra.run.dir=..., hydra.sweep.dir=...)"
            )


def check_local_dir(path: str, key: str) -> None:
    """Refuse a URL as the run (or sweep) directory: it would become a local folder named
    ``s3:``. The run directory is the local working copy; a remote copy is ``checkpoints.remote``.

    Raises:
        FinSenseError: one line pointing to ``checkpoints.remote``.
    """
    if "://" in str(path):
        raise FinSenseError(
            f"{key}={path} is a URL; the run directory must be a local path. Keep {key} local "
            f"and mirror the checkpoints with checkpoints.remote={path}"
        )


class RunCallback(Callback):
    """Hydra callback of the ``python -m finsense.train`` process, run or sweep.

    Before Hydra makes the run (or sweep) directory: a file standing in its way is one line
    (Hydra's own failure would be a raw ``NotADirectoryError``). Before a sweep launches any job:
    sweeping a key left out of run-directory names is refused (the jobs would merge), and the
    invocation gets an id its jobs record in the sweep's manifest. After the sweep: one line per
    failed job and a non-zero exit, so a script or CI pipeline sees the failure.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        _refuse_on_error(check_local_dir, config.hydra.run.dir, "hydra.run.dir")
        _refuse_on_error(check_output_path, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        from finsense import sweeps

        _refuse_on_error(check_local_dir, config.hydra.sweep.dir, "hydra.sweep.dir")
        _refuse_on_error(check_output_path, config.hydra.sweep.dir)
        excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
        message = sweeps.unsweepable(_swept_keys(config), excluded)
        if message is not None:
            sys.stderr.write(f"ERROR: {message}\n")
            sys.exit(2)
        self.invocation = sweeps.start_invocation()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        from finsense import sweeps

        invocation = getattr(self, "invocation", None)
        if invocation is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = sweeps.last_events(sweeps.read_manifest(sweep_dir), invocation)
        failed = {job: e for job, e in jobs.items() if e.get("event") == "failed"}
        if not failed:
            return
        for job, event in sorted(failed.items()):
            sys.stderr.write(f"FAILED {sweep_dir / job}: {event.get('error')}\n")
        sys.stderr.write(
            f"ERROR: {len(failed)} of {len(jobs)} sweep jobs failed (see above); fix the cause "
            "and run the same command again: finished jobs end at once, the rest resume\n"
        )
        sys.stderr.flush()
        sys.exit(1)


def _refuse_on_error(check: Any, *args: Any) -> None:
    try:
        check(*args)
    except FinSenseError as err:
        sys.stderr.write(f"ERROR: {err}\n")
        sys.exit(err.exit_code)


def _swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: overrides with several values (``seed=0,1``, ``range(...)``)
    and an optuna-style sweeper's search space (``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if isinstance(params, DictConfig):
        keys.extend(str(k) for k in params)
    return keys


class _RunRecord:
    """What a run writes about itself, held back until the command is known to run.

    A refused command (a bad value, a run in use, a changed network shape) or a finished run's
    "already complete" must leave the run directory as it was. Until :meth:`start`, log records
    are kept in memory (and still shown on the console); :meth:`start` writes Hydra's record
    (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``, which Hydra itself is told not
    to write: ``hydra.output_subdir: null``), opens ``logs/finsense.log`` with the held records
    first, and records this process's pid in the run lock.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, lock: Any) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.lock = lock
        self._held = logging.handlers.BufferingHandler(capacity=1 << 30)
        self._file: logging.Handler | None = None
        logging.getLogger().addHandler(self._held)

    def start(self) -> None:
        """The command runs: write the record and the held log lines."""
        from finsense.checkpoint import write_bytes_atomic
        from finsense.errors import CheckpointError

        root = logging.getLogger()
        try:
            record = self.run_dir / ".hydra"
            record.mkdir(exist_ok=True)
            hydra_cfg = HydraConfig.get()
            for name, node in (
                ("config.yaml", self.cfg),
                ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                ("overrides.yaml", hydra_cfg.overrides.task),
            ):
                write_bytes_atomic(record / name, OmegaConf.to_yaml(node).encode("utf-8"))
            (self.run_dir / "logs").mkdir(exist_ok=True)
            path = self.run_dir / "logs" / "finsense.log"
            self._file = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(
                f"{exc.filename or self.run_dir}: cannot write to the run directory "
                f"({exc.strerror or exc}); check its permissions and free space"
            ) from None
        self._file.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        for held in self._held.buffer:
            self._file.handle(held)
        root.removeHandler(self._held)
        self._held.close()
        root.addHandler(self._file)
        self.lock.record_pid()

    def close(self) -> None:
        """Detach the handlers (held records of a command that never ran are dropped)."""
        root = logging.getLogger()
        for handler in (self._held, self._file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Train the run of ``cfg`` in ``run_dir``; return its best checkpointed ``metric_name`` value.

    Compose (Hydra did), build (:mod:`finsense.components`), fit (:class:`Trainer`). Raises
    FinSenseError for any user mistake; the entry point turns it into one line.
    """
    from finsense import components
    from finsense.checkpoint import CheckpointManager, RunLock
    from finsense.config import check_metric_name
    from finsense.device import resolve_device, set_torch_threads
    from finsense.trainer import Trainer, TrainSettings, resume_path, seed_everything

    validate(cfg)
    check_run_dir_layout(run_dir)
    device = resolve_device(cfg.device)
    # Resolved once, here: a missing file is refused before any work.
    resume: str | Path = str(cfg.resume)
    if resume not in ("auto", "never"):
        resume = resume_path(str(resume), run_dir)

    # Build everything that can fail on bad input before touching the run directory. An
    # unreachable remote is refused here too (before seeding: its back-end's imports draw
    # random numbers).
    remote = open_remote_models(cfg, run_dir)
    set_torch_threads(cfg.threads)
    seed_everything(cfg.seed)
    loggers = build_loggers(cfg)
    env = components.build_env(cfg)
    held_out = tuple(getattr(env.unwrapped, "held_out_splits", ()))
    cfg.checkpoints.metric_name = check_metric_name(
        cfg, components.episode_metric_names(env), held_out
    )
    agent = components.build_agent(cfg, env, device)
    evaluation = _HeldOutEvaluation.of_run(cfg, agent, held_out)
    plain = to_plain(cfg)
    settings = TrainSettings(
        episodes=cfg.episodes,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        save_frequency=cfg.checkpoints.save_frequency,
        save_every_minutes=cfg.checkpoints.save_every_minutes,
        progress=cfg.progress,
    )

    with RunLock(run_dir) as lock:
        store = dict(
            max_keep=cfg.checkpoints.max_keep,
            save_best=cfg.checkpoints.save_best,
            metric_name=cfg.checkpoints.metric_name,
            mode=cfg.checkpoints.mode,
            map_location=str(device),
        )
        mirrored = None
        if remote is None:
            manager = CheckpointManager(run_dir / "models", **store)
        else:
            from finsense.checkpoint.mirrored import MirroredCheckpointManager

            manager = mirrored = MirroredCheckpointManager(run_dir / "models", remote, **store)
        record = _RunRecord(cfg, run_dir, lock)
        trainer = Trainer(
            env,
            agent,
            manager,
            run_dir,
            settings,
            config=plain,
            loggers=loggers,
            on_episode=evaluation,
            on_start=record.start,
        )
        try:
            result = trainer.run(resume=resume)
        finally:
            if mirrored is not None:
                mirrored.close()  # the last upload: waited for, retried once if it failed
            record.close()

    if result.interrupted_by is not None:
        where = _relative(result.last_checkpoint, run_dir)
        print(
            f"Interrupted at episode {result.last_episode}; checkpoint saved: {where}. "
            "Run the same command to resume.",
            flush=True,
        )
        raise _InterruptedError(128 + result.interrupted_by)
    if not result.already_complete:
        _print_summary(result, run_dir)
    return result.best_value


def open_remote_models(cfg: DictConfig, run_dir: Path) -> Any:
    """The run's remote ``models/`` (``checkpoints.remote``), checked to be reachable; None
    when no remote is configured.

    Raises:
        ConfigError: the URL cannot be used (unknown protocol, a missing extra).
        CheckpointError: the remote cannot be reached (one line; no silent fresh start).
    """
    url = cfg.checkpoints.remote
    if url is None:
        return None
    from finsense.checkpoint.remote import open_remote

    return open_remote(str(url), run_dir.name)


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The loggers ``cfg.logger`` names (``metrics.csv`` is the trainer's own, always kept).

    Built before any work, so a missing extra or a bad key is refused at once.
    """
    from finsense import components

    loggers = []
    for name in cfg.logger:
        node = cfg.logger[name]
        if node is None:
            continue  # logger.wandb=null switches one off
        loggers.append(components.instantiate(node, f"logger.{name}"))
    return loggers


class _HeldOutEvaluation:
    """The greedy policy scored on the splits kept out of training, as ``val_*`` and ``test_*``
    columns of the episode's row.

    The validation split is scored every ``eval_every`` episodes, and at every checkpoint
    episode when a ``val_*`` metric chooses the best model (so it ranks every checkpoint). The
    test split is scored only when ``checkpoints.metric_name`` asks for a ``test_*`` metric, at
    every checkpoint episode too, with a warning that it is then no longer held out. Other rows
    carry NaN so ``metrics.csv`` keeps one set of columns. Greedy acting draws no random numbers:
    evaluating does not change training.
    """

    def __init__(self, cfg: DictConfig, agent: Any, every: dict[str, int]) -> None:
        from finsense.envs import TradingEnv
        from finsense.evaluation import eval_env_kwargs

        kwargs = eval_env_kwargs(to_plain(cfg)["env"])
        # Built once, now: a split too short for the window is refused before any work.
        self.envs = {split: TradingEnv(**{**kwargs, "split": split}) for split in every}
        self.every = every
        self.save_frequency = int(cfg.checkpoints.save_frequency)
        self.episodes = int(cfg.episodes)
        self.max_steps = cfg.max_steps
        self.agent = agent

    @classmethod
    def of_run(
        cls, cfg: DictConfig, agent: Any, held_out: tuple[str, ...]
    ) -> _HeldOutEvaluation | None:
        """The evaluation ``cfg`` asks for, or None when there is nothing to score (an env
        with no held-out split, or ``eval_every=0`` and a training metric choosing the best).

        ``every[split]`` is the split's period in episodes; 0 scores it at checkpoints only.
        """
        metric = str(cfg.checkpoints.metric_name)
        every: dict[str, int] = {}
        if "val" in held_out and (int(cfg.eval_every) > 0 or metric.startswith("val_")):
            every["val"] = int(cfg.eval_every)
        if metric.startswith("test_"):
            log.warning(
                "checkpoints.metric_name=%s chooses the best model on the test split: the test "
                "split is then no longer held out, and its scores overstate what to expect on "
                "new data; choose on the validation split (checkpoints.metric_name=val_%s)",
                metric,
                metric.removeprefix("test_"),
            )
            every["test"] = 0
        return cls(cfg, agent, every) if every else None

    def __call__(self, episode: int, row: dict[str, Any]) -> dict[str, Any]:
        from finsense.config import EPISODE_METRIC_NAMES
        from finsense.evaluation import split_metrics

        checkpoint = (
            episode % self.save_frequency == 0
            or episode == self.episodes
            or (self.max_steps is not None and self.agent.steps >= self.max_steps)
        )
        scores: dict[str, Any] = {}
        for split, env in self.envs.items():
            every = self.every[split]
            if checkpoint or (every > 0 and episode % every == 0):
                scores.update(split_metrics(self._act, env))
            else:
                scores.update({f"{split}_{name}": math.nan for name in EPISODE_METRIC_NAMES})
        return scores

    def _act(self, observation: Any) -> int:
        return int(self.agent.act(observation, explore=False))


class _InterruptedError(Exception):
    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def _relative(path: Path | None, run_dir: Path) -> str:
    from finsense.runs import relative_to_run

    return "(none)" if path is None else relative_to_run(path, run_dir)


def _print_summary(result: Any, run_dir: Path) -> None:
    lines = [f"Training complete: {result.last_episode}/{result.episodes} episodes in {run_dir}"]
    if result.best is not None:
        value = result.best_value
        shown = "nan" if math.isnan(value) else f"{value:,.4f}"
        lines.append(
            f"  best: episode {result.best.metadata.get('episode')} "
            f"{result.metric_name}={shown} -> models/best_model.pt"
        )
    lines.append(f"  latest checkpoint: {_relative(result.last_checkpoint, run_dir)}")
    lines.append("  per-episode metrics: metrics.csv   log: logs/finsense.log")
    log.info("\n".join(lines))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra task: one run (or one sweep job). Returns the best metric value (for sweepers)."""
    from finsense.parent_watch import watch_launcher

    watch_launcher()  # a sweep worker whose launcher dies stops gracefully and exits
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    _format_console()
    job = _SweepJob(run_dir, hydra_cfg) if multirun else None
    try:
        value = train(cfg, run_dir)
    except FinSenseError as err:
        log.error("%s", err)
        if job is not None:
            # One bad job must not take the rest of the sweep down: it is recorded, and the
            # sweep's process reports every failed job and exits non-zero at the end.
            job.failed(str(err))
            return math.nan
        _remove_if_empty(run_dir)
        sys.exit(err.exit_code)
    except _InterruptedError as stop:
        if job is not None:
            job.finished("interrupted")
        sys.exit(stop.exit_code)
    if job is not None:
        job.finished("complete")
    return value


class _SweepJob:
    """One sweep job's entries in the sweep's manifest and its failure marker."""

    def __init__(self, run_dir: Path, hydra_cfg: Any) -> None:
        from finsense import sweeps

        self.sweeps = sweeps
        self.run_dir = run_dir
        self.sweep_dir = Path(str(hydra_cfg.sweep.dir)).absolute()
        self.overrides = list(hydra_cfg.overrides.task)
        self._record("started")

    def _record(self, event: str, error: str | None = None) -> None:
        try:
            self.sweeps.record(
                self.sweep_dir, self.run_dir, event, overrides=self.overrides, error=error
            )
        except OSError as exc:  # the job's own result matters more than its manifest line
            log.warning("%s: cannot record the job (%s)", self.sweep_dir, exc.strerror or exc)

    def failed(self, error: str) -> None:
        """The job was refused or failed with ``error`` (one line)."""
        self.sweeps.mark_failed(self.run_dir, error)
        self._record("failed", error)

    def finished(self, event: str) -> None:
        """The job ran: ``complete`` (or already complete) or ``interrupted``."""
        self.sweeps.clear_failed(self.run_dir)
        self._record(event)


def _remove_if_empty(run_dir: Path) -> None:
    """Undo the empty run directory Hydra made for a command refused before any work (a typo in
    a value, a bad data file), so mistakes leave no empty runs behind; a directory holding
    anything stays."""
    with contextlib.suppress(OSError):  # not empty (a run with history), or already gone
        os.rmdir(run_dir)


def version_line() -> str:
    """``finsense 0.1.0 (torch 2.13.0, hydra-core 1.3.8, Python 3.11.7)``: read from the
    installed packages' metadata, so no heavy import runs."""
    from importlib.metadata import PackageNotFoundError, version

    from finsense import __version__

    parts = []
    for package in ("torch", "hydra-core"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    parts.append(f"Python {sys.version.split()[0]}")
    return f"finsense {__version__} ({', '.join(parts)})"


def main() -> None:
    """Console entry point (``finsense-train``) and ``python -m finsense.train``."""
    from finsense.cli import restore_interrupt

    if "--version" in sys.argv[1:]:
        restore_interrupt()
        print(version_line())
        return
    try:
        sys.argv = [sys.argv[0], *translate_guide_flags(sys.argv[1:])]
    except FinSenseError as err:
        restore_interrupt()
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    from finsense.parent_watch import mark_launcher

    mark_launcher()  # sweep workers inherit this pid and end when this process dies
    if not {"-h", "--help", "--hydra-help"} & set(sys.argv[1:]):
        # The heavy imports happen now, while Ctrl+C still ends the process at once with one
        # line (finsense/__init__.py): a KeyboardInterrupt raised inside torch's import, where
        # Python runs under C++ frames, would abort the process (SIGABRT) instead.
        import torch  # noqa: F401

        import finsense.components  # noqa: F401
    restore_interrupt()
    # Ctrl+C outside the episode loop (while importing, composing, finishing) ends quietly too.
    try:
        hydra_main()
    except BrokenPipeError:  # `--help | head`: the reader went away, as with any Unix tool
        from finsense.cli import point_at_devnull

        point_at_devnull(sys.stdout.fileno())
        sys.exit(128 + getattr(signal, "SIGPIPE", 13))
    except KeyboardInterrupt:
        print("Interrupted; the checkpoints on disk are intact.", file=sys.stderr)
        # Nothing after that line: an import cut short (torch's, whose logging setup had not
        # run) leaves exit hooks that would log their debug lines through the console handler.
        logging.disable(logging.CRITICAL)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that launchers (joblib, submitit) pickle
    # the task by reference and their workers import finsense.train (and its resolvers) themselves.
    from finsense import train as _train

    _train.main()
