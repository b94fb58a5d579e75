"""Structured configs: the types, defaults and ranges of the run-level keys in ``conf/``.

Hydra checks types when it composes the config (``episodes=abc`` fails before any work starts);
:func:`validate` checks ranges and raises :class:`ConfigError` naming the key. The components
(``agent``, its ``network`` and ``optimizer``, ``env``, ``logger``) are nodes with a ``_target_``
that :mod:`finsense.components` builds with ``hydra.utils.instantiate``: their keys are the keyword
arguments of their targets, and each target checks its own (one validation layer, next to the
code that uses the value).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.resources import files
from typing import Any, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
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
    # Any key of the env's episode metrics or, for a trading env, their val_* / test_* twins;
    # null: val_total_profit (validation profit) for trading envs with a validation split, else
    # the env's main metric (total_profit; episode_return for others).
    metric_name: str | None = None
    mode: str = "max"  # max or min: which direction of metric_name is better
    save_every_minutes: float | None = None  # also save when this much wall time has passed
    # Any fsspec URL (s3://bucket/prefix, gs://..., file:///mnt/...): every checkpoint is also
    # written to URL/<run directory name>/models/; null: local only.
    remote: str | None = None


@dataclass
class FinSenseConfig:
    """The whole run config: groups plus run-level keys."""

    # Components: each a node with a ``_target_`` (see :mod:`finsense.components`); their keys
    # are the keyword arguments of their targets, which check them (one validation layer).
    agent: Any = field(default_factory=dict)
    env: Any = field(default_factory=dict)
    logger: Any = field(default_factory=dict)  # name -> logger node; metrics.csv is always kept
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    episodes: int = 300  # total training episodes (raise it later to extend a run)
    max_steps: int | None = None  # or stop at the end of the episode where env steps reach this
    seed: int = 0
    resume: str = "auto"  # auto | never | path to a checkpoint .pt
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int | None = None  # torch threads; null = FinSense's measured default
    name: str | None = None  # optional run name, part of the run directory
    progress: str = "auto"  # auto (bar on a terminal) | bar | log
    # Score the greedy policy on the validation split every N episodes (val_* metrics); it is
    # scored at every checkpoint too when a val_* metric chooses the best model. 0 = only then.
    eval_every: int = 5


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (``conf/config.yaml`` lists it first)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="finsense_schema", node=FinSenseConfig)


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def metric_names(
    cfg: DictConfig | FinSenseConfig,
    episode_metrics: tuple[str, ...],
    held_out: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The names ``checkpoints.metric_name`` may take: the env's ``episode_metrics``, and their
    ``val_*`` / ``test_*`` twins for each held-out split the env can score (``held_out``: a
    trading env's ``("val", "test")``, less a split with no rows)."""
    names = tuple(episode_metrics)
    for split in held_out:
        names = names + tuple(f"{split}_{n}" for n in episode_metrics)
    return names


def check_metric_name(
    cfg: DictConfig, episode_metrics: tuple[str, ...], held_out: tuple[str, ...] = ()
) -> str:
    """The ``checkpoints.metric_name`` of this run: the configured one if the env reports it,
    else (null) the validation split's main metric (``val_total_profit``) when the env has a
    validation split, and the env's main metric, ``episode_metrics[0]``, when it has none.

    Raises:
        ConfigError: a name the env does not report, with the names it does.
    """
    name = cfg.checkpoints.metric_name
    if name is None:
        if "val" in held_out:
            return f"val_{episode_metrics[0]}"
        return episode_metrics[0]
    names = metric_names(cfg, episode_metrics, held_out)
    if name not in names:
        split = str(name).split("_", 1)[0]
        hint = ""
        if split in ("val", "test") and split not in held_out:
            hint = (
                " (val_* metrics need a validation split: env.data.val_fraction > 0)"
                if split == "val"
                else " (test_* metrics need a trading env with test rows)"
            )
        raise ConfigError(
            f"checkpoints.metric_name: unknown metric {name!r}; "
            f"choose one of {', '.join(names)}{hint}"
        )
    return str(name)


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


def unknown_key(key: str, group: str, known: list[str]) -> ConfigError:
    """:func:`_unknown_key` for components that check their own keys (agents, envs)."""
    return _unknown_key(key, group, [k for k in known if not k.startswith("_")])


def _read(node: DictConfig, key: str, full: str) -> Any:
    if OmegaConf.is_missing(node, key):
        raise ConfigError(f"{full} has no value (???); set it: {full}=...")
    try:
        return node[key]
    except OmegaConfBaseException as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{full} cannot be read: {reason}") from None


def _check_readable(node: DictConfig | ListConfig, group: str) -> None:
    """Every value of a component node can be read: no ``???`` left, no broken interpolation."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node)
    for key in keys:
        full = f"{group}[{key}]" if isinstance(key, int) else f"{group}.{key}"
        value = _read(node, key, full)  # type: ignore[arg-type]
        if isinstance(value, DictConfig | ListConfig):
            _check_readable(value, full)


def _check_keys(node: DictConfig, schema: type, group: str = "") -> None:
    """Refuse keys the schema does not have, at every level, and values that cannot be read.

    Hydra's structured config rejects ``foo=1`` at composition, but ``+foo=1`` and ``++foo=1``
    add keys with ``force_add``, which bypasses the struct flag and the dataclass schema by
    design; so the composed config is checked against the dataclasses here, before any work.
    Component nodes (``agent``, ``env``, ``logger``: typed ``Any``) are the keyword arguments of
    their ``_target_``, which checks its own keys when it is built; here only that every value
    can be read.
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
        value = _read(node, key, full)
        sub = hints[key]
        if is_dataclass(sub) and isinstance(sub, type) and isinstance(value, DictConfig):
            _check_keys(value, sub, full)
        elif sub is Any and isinstance(value, DictConfig | ListConfig):
            _check_readable(value, full)


def validate(cfg: DictConfig) -> None:
    """Check the run-level keys and ``checkpoints.*`` of a composed config; raise ConfigError
    naming the key. The components (agent, network, env, loggers) check their own keys when
    they are built (:mod:`finsense.components`), and ``checkpoints.metric_name`` is checked
    against the env's metrics then (:func:`check_metric_name`)."""
    _check_keys(cfg, FinSenseConfig)
    _require(cfg.episodes >= 1, "episodes", "must be >= 1", cfg.episodes)
    _require(
        cfg.max_steps is None or cfg.max_steps >= 1,
        "max_steps",
        "must be >= 1 or null",
        cfg.max_steps,
    )
    _require(
        cfg.resume is not None and str(cfg.resume) != "",
        "resume",
        "must be auto, never or a path",
        cfg.resume,
    )
    _require(
        cfg.progress in ("auto", "bar", "log"), "progress", "must be auto, bar or log", cfg.progress
    )
    _require(cfg.eval_every >= 0, "eval_every", "must be >= 0", cfg.eval_every)
    _require(
        cfg.threads is None or cfg.threads >= 1, "threads", "must be >= 1 or null", cfg.threads
    )
    for group in ("agent", "env"):
        if "_target_" not in cfg[group]:
            raise ConfigError(
                f"{group} has no _target_ (what to build); choose a preset ({group}=...) or "
                f"set {group}._target_=package.module.Class"
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
    _require(
        ck.remote is None or str(ck.remote).strip() != "",
        "checkpoints.remote",
        "must be a URL (s3://bucket/prefix, gs://..., file:///path) or null",
        ck.remote,
    )


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain JSON-able values (interpolations resolved, Hydra keys dropped)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return {str(k): v for k, v in plain.items()}
