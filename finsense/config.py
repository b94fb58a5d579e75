"""Structured configs: the types, defaults and ranges of every key in ``conf/``.

Hydra checks types when it composes the config (``episodes=abc`` fails before any work starts);
:func:`validate` checks ranges and cross-key rules and raises :class:`ConfigError` naming the key.
The YAML files in ``conf/`` hold the values; these dataclasses hold the schema, in one place.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from importlib.resources import files
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finsense.errors import ConfigError

#: Metrics every training episode reports (``info["episode_metrics"]``): the valid
#: ``checkpoints.metric_name`` values.
EPISODE_METRIC_NAMES: tuple[str, ...] = (
    "total_profit",
    "total_return",
    "sharpe_ratio",
    "max_drawdown",
    "total_trades",
    "win_rate",
    "buy_and_hold_return",
    "final_equity",
)


def non_experiment_keys() -> tuple[str, ...]:
    """Keys that do not change what an experiment is, so they never change its run directory:
    the one list, ``hydra.job.config.override_dirname.exclude_keys`` in ``conf/config.yaml``
    (``episodes``, ``device``, ``checkpoints.*``, ...). The drift check and the report's seed
    grouping read it from there too."""
    return _non_experiment_keys()


@functools.cache
def _non_experiment_keys() -> tuple[str, ...]:
    import yaml

    text = (files("finsense") / "conf" / "config.yaml").read_text(encoding="utf-8")
    hydra = yaml.safe_load(text)["hydra"]
    return tuple(hydra["job"]["config"]["override_dirname"]["exclude_keys"])


@dataclass
class CheckpointsConfig:
    """When and what the checkpoint store writes (``checkpoints.*``)."""

    save_frequency: int = 10  # save every N episodes (the final episode is always saved)
    max_keep: int = 5  # newest episodic checkpoints kept; best_model.* is always kept
    save_best: bool = True  # keep best_model.pt/json, chosen by metric_name
    metric_name: str = "total_profit"  # any key of the episode metrics (test_* with eval_every)
    mode: str = "max"  # max or min: which direction of metric_name is better
    save_every_minutes: float | None = None  # also save when this much wall time has passed


@dataclass
class DataConfig:
    """Where prices come from (``env.data.*``)."""

    source: str = "synthetic"  # synthetic | sample | file
    path: str | None = None  # CSV or Parquet file (source=file)
    sample: str = "GOOGL"  # shipped sample (source=sample)
    date_column: str = "Date"
    close_column: str = "Close"
    test_fraction: float = 0.2  # last fraction of rows held out for evaluation
    n_steps: int = 2000  # synthetic: number of daily prices
    seed: int = 0  # synthetic: the price path's own seed (independent of the run seed)
    initial_price: float = 100.0
    drift: float = 0.0002  # synthetic: mean daily log return
    volatility: float = 0.01  # synthetic: daily log-return std
    ar_coef: float = 0.0  # synthetic: planted momentum, AR(1) coefficient on returns
    regime_switch_prob: float = 0.0  # synthetic: per-day probability of a drift regime switch
    regime_drift: float = 0.001  # synthetic: +/- drift of the two regimes


@dataclass
class EnvConfig:
    """The trading environment (``env.*``); keyword arguments of ``finsense/Trading-v0``."""

    data: DataConfig = field(default_factory=DataConfig)
    window_size: int = 30  # past log returns in each observation
    episode_length: int | None = 252  # steps per episode; null = the whole training split
    random_start: bool = True  # start each episode at a seeded random offset
    fee: float = 0.001  # proportional cost on traded notional
    allow_short: bool = False  # actions {flat, long} or {short, flat, long}
    initial_cash: float = 10_000.0
    reward: str = "log_return"  # log_return | profit


def _agent_schema() -> type:
    """``agent.*``: the fields of :class:`finsense.agents.DQNConfig` (one place for names, types
    and defaults) plus ``name``, as a mutable dataclass Hydra can merge overrides into."""
    from finsense.agents import DQNConfig

    hints = get_type_hints(DQNConfig)
    specs: list[tuple[str, Any, Any]] = [("name", str, field(default="dqn"))]
    for f in fields(DQNConfig):
        if f.name == "hidden_sizes":
            sizes: list[int] = list(DQNConfig.hidden_sizes)
            specs.append((f.name, list[int], field(default_factory=sizes.copy)))
        else:
            specs.append((f.name, hints[f.name], field(default=f.default)))
    schema = make_dataclass("AgentConfig", specs)
    schema.__doc__ = "DQN hyperparameters (``agent.*``); names follow Stable-Baselines3."
    return schema


AgentConfig = _agent_schema()


@dataclass
class FinSenseConfig:
    """The whole run config: groups plus run-level keys."""

    agent: AgentConfig = field(default_factory=AgentConfig)  # type: ignore[valid-type]
    env: EnvConfig = field(default_factory=EnvConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    episodes: int = 300  # total training episodes (raise it later to extend a run)
    seed: int = 0
    resume: str = "auto"  # auto | never | path to a checkpoint .pt
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int | None = None  # torch threads; null = FinSense's measured default
    name: str | None = None  # optional run name, part of the run directory
    progress: str = "auto"  # auto (bar on a terminal) | bar | log
    logger: str = "csv"  # csv | tensorboard
    eval_every: int = 0  # evaluate on the test split every N episodes (0 = never)


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (``conf/config.yaml`` lists it first)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="finsense_schema", node=FinSenseConfig)


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def metric_names(cfg: DictConfig | FinSenseConfig) -> tuple[str, ...]:
    """The names ``checkpoints.metric_name`` may take for this config."""
    names = EPISODE_METRIC_NAMES
    if int(cfg.eval_every) > 0:
        names = names + tuple(f"test_{n}" for n in EPISODE_METRIC_NAMES)
    return names


#: Top-level keys Hydra itself may put in a composed config (``compose(return_hydra_config=True)``).
_HYDRA_KEYS: frozenset[str] = frozenset({"hydra"})


def _unknown_key(key: str, group: str, known: list[str]) -> ConfigError:
    """The error for a key the schema does not have, with the closest known key as the fix."""
    full = f"{group}.{key}" if group else key
    where = f"a key of {group}" if group else "a config key"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        fix = f"{group}.{close[0]}" if group else close[0]
        return ConfigError(f"{full} is not {where} (did you mean {fix}?)")
    return ConfigError(f"{full} is not {where}; remove it (the keys are: {', '.join(known)})")


def _check_keys(node: DictConfig, schema: type, group: str = "") -> None:
    """Refuse keys the schema does not have, at every level, and values that cannot be read.

    Hydra's structured config rejects ``foo=1`` at composition, but ``+foo=1`` and ``++foo=1``
    add keys with ``force_add``, which bypasses the struct flag and the dataclass schema by
    design; so the composed config is checked against the dataclasses here, before any work.
    """
    hints = get_type_hints(schema)
    known = [f.name for f in fields(schema)]
    for raw_key in node:
        key = str(raw_key)
        full = f"{group}.{key}" if group else key
        if key not in hints:
            if not group and key in _HYDRA_KEYS:
                continue
            raise _unknown_key(key, group, known)
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{full} has no value (???); set it: {full}=...")
        try:
            value = node[key]
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"{full} cannot be read: {reason}") from None
        sub = hints[key]
        if is_dataclass(sub) and isinstance(sub, type) and isinstance(value, DictConfig):
            _check_keys(value, sub, full)


def validate(cfg: DictConfig) -> None:
    """Check keys, ranges and cross-key rules of a composed config; raise ConfigError naming the
    key."""
    _check_keys(cfg, FinSenseConfig)
    _require(cfg.episodes >= 1, "episodes", "must be >= 1", cfg.episodes)
    _require(
        cfg.resume is not None and str(cfg.resume) != "",
        "resume",
        "must be auto, never or a path",
        cfg.resume,
    )
    _require(
        cfg.progress in ("auto", "bar", "log"), "progress", "must be auto, bar or log", cfg.progress
    )
    _require(
        cfg.logger in ("csv", "tensorboard"), "logger", "must be csv or tensorboard", cfg.logger
    )
    _require(cfg.eval_every >= 0, "eval_every", "must be >= 0", cfg.eval_every)
    _require(
        cfg.threads is None or cfg.threads >= 1, "threads", "must be >= 1 or null", cfg.threads
    )

    ck = cfg.checkpoints
    _require(
        ck.save_frequency >= 1, "checkpoints.save_frequency", "must be >= 1", ck.save_frequency
    )
    _require(ck.max_keep >= 1, "checkpoints.max_keep", "must be >= 1", ck.max_keep)
    _require(ck.mode in ("max", "min"), "checkpoints.mode", "must be max or min", ck.mode)
    _require(
        ck.save_every_minutes is None or ck.save_every_minutes > 0,
        "checkpoints.save_every_minutes",
        "must be > 0 or null",
        ck.save_every_minutes,
    )
    names = metric_names(cfg)
    if ck.metric_name not in names:
        hint = "" if int(cfg.eval_every) > 0 else " (test_* metrics need eval_every > 0)"
        raise ConfigError(
            f"checkpoints.metric_name: unknown metric {ck.metric_name!r}; "
            f"choose one of {', '.join(names)}{hint}"
        )

    ag = cfg.agent
    _require(
        ag.learning_rate > 0 and math.isfinite(ag.learning_rate),
        "agent.learning_rate",
        "must be > 0",
        ag.learning_rate,
    )
    _require(ag.buffer_size >= 1, "agent.buffer_size", "must be >= 1", ag.buffer_size)
    _require(ag.batch_size >= 1, "agent.batch_size", "must be >= 1", ag.batch_size)
    if ag.batch_size > ag.buffer_size:
        # Sampling is with replacement, so it would run, but every batch would repeat transitions
        # many times over and cost memory and time out of all proportion (issue 10).
        raise ConfigError(
            f"agent.batch_size={ag.batch_size} must be <= agent.buffer_size={ag.buffer_size}; "
            "lower agent.batch_size or raise agent.buffer_size"
        )
    _require(ag.learning_starts >= 0, "agent.learning_starts", "must be >= 0", ag.learning_starts)
    _require(0.0 <= ag.gamma <= 1.0, "agent.gamma", "must be in [0, 1]", ag.gamma)
    _require(ag.train_freq >= 1, "agent.train_freq", "must be >= 1", ag.train_freq)
    _require(ag.gradient_steps >= 1, "agent.gradient_steps", "must be >= 1", ag.gradient_steps)
    _require(
        ag.target_update_interval >= 1,
        "agent.target_update_interval",
        "must be >= 1",
        ag.target_update_interval,
    )
    _require(
        len(ag.hidden_sizes) >= 1 and all(h >= 1 for h in ag.hidden_sizes),
        "agent.hidden_sizes",
        "must be a non-empty list of positive sizes",
        list(ag.hidden_sizes),
    )
    _require(ag.max_grad_norm > 0, "agent.max_grad_norm", "must be > 0", ag.max_grad_norm)
    _require(
        0.0 <= ag.epsilon_end <= ag.epsilon_start <= 1.0,
        "agent.epsilon_start/epsilon_end",
        "must satisfy 0 <= epsilon_end <= epsilon_start <= 1",
        (ag.epsilon_start, ag.epsilon_end),
    )
    _require(
        ag.exploration_steps >= 0, "agent.exploration_steps", "must be >= 0", ag.exploration_steps
    )

    env = cfg.env
    _require(env.window_size >= 1, "env.window_size", "must be >= 1", env.window_size)
    _require(
        env.episode_length is None or env.episode_length >= 1,
        "env.episode_length",
        "must be >= 1 or null",
        env.episode_length,
    )
    _require(env.fee >= 0, "env.fee", "must be >= 0", env.fee)
    _require(env.initial_cash > 0, "env.initial_cash", "must be > 0", env.initial_cash)
    _require(
        env.reward in ("log_return", "profit"),
        "env.reward",
        "must be log_return or profit",
        env.reward,
    )
    data = env.data
    _require(
        data.source in ("synthetic", "sample", "file"),
        "env.data.source",
        "must be synthetic, sample or file",
        data.source,
    )
    _require(
        0.0 <= data.test_fraction < 1.0,
        "env.data.test_fraction",
        "must be in [0, 1)",
        data.test_fraction,
    )
    if data.source == "file" and not data.path:
        raise ConfigError("env.data.path is required for file data: pass env.data.path=prices.csv")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain JSON-able values (interpolations resolved, Hydra keys dropped)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return {str(k): v for k, v in plain.items()}
