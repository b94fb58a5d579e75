"""A backtest: a run's policy scored on other prices, ``finsense.evaluate RUN_DIR OVERRIDE ...``.

The env of a backtest is the run's recorded ``env`` section with the command's env overrides,
read with Hydra's override syntax:

- ``env=NAME`` takes the market (``env.data``) of the env config ``conf/env/NAME.yaml`` (a
  trading env: ``csv``, ``googl``, ``synthetic``); the run's costs, cash and execution stay.
- ``env.data.KEY=VALUE`` sets a key of the market: ``env.data.path=new.csv`` (relative to the
  current directory). On a run whose market is not a file, a path alone reads that file, as
  ``env=csv env.data.path=new.csv`` would.
- ``env.fee``, ``env.slippage_bps``, ``env.borrow_rate``, ``env.initial_cash`` and
  ``env.execution`` change the trading rules every policy (the agent and the baselines) is scored
  under. None of them changes what the policy observes.

Refused, one line each: ``env.window_size``, ``env.allow_short`` and ``env.feature_scale`` (the
policy fixes what it observes and the actions it has; the checkpoint holds them), ``env.split``,
``env.episode_length``, ``env.random_start``, ``env.data.val_fraction`` and
``env.data.test_fraction`` (an evaluation fixes its rows, below), ``env.reward`` (no metric
reads it), and any other key.

**Rows**: on new data (a market other than the run's) every row is scored (``split="all"``:
none of it was the run's training data); with the run's own market (only the trading rules
changed) the test split, as a plain evaluation. The first ``window_size`` rows of either are
history for the first observation, not traded.

**Where**: a backtest writes ``RUN_DIR/eval/backtest/<data name>/`` (:func:`data_name`), never
over the run's own ``RUN_DIR/eval/test_metrics.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsense.data.loader import DATA_KEYS
from finsense.errors import ConfigError

#: Env keys a backtest may set: the trading rules, which change no observation.
RULE_KEYS: tuple[str, ...] = ("fee", "slippage_bps", "borrow_rate", "initial_cash", "execution")
#: Env keys the policy fixes (a checkpoint's ``policy["observation"]`` holds them).
POLICY_KEYS: tuple[str, ...] = ("window_size", "allow_short", "feature_scale")
#: Env keys every evaluation sets itself (which rows), and the reward no metric reads.
EVALUATION_KEYS: tuple[str, ...] = (
    "split",
    "episode_length",
    "random_start",
    "data.val_fraction",
    "data.test_fraction",
    "reward",
)
#: ``env.data`` keys that split the rows rather than name the prices.
SPLIT_KEYS: tuple[str, ...] = ("val_fraction", "test_fraction")
#: Where backtests go, under the run's ``eval/``.
BACKTEST_DIR = "backtest"


@dataclass(frozen=True)
class EnvOverrides:
    """Parsed backtest overrides.

    Attributes:
        args: the overrides as given (``env=googl``, ``env.fee=0.002``).
        group: the env config whose market to take (``env=NAME``), or None.
        data: ``env.data`` keys to set, by key below ``env.data``.
        rules: trading-rule keys to set (:data:`RULE_KEYS`), by key below ``env``.
    """

    args: tuple[str, ...] = ()
    group: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    rules: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backtest:
    """The env of a backtest (see the module docstring).

    Attributes:
        overrides: what it came from.
        env_kwargs: TradingEnv keyword arguments: the run's env with the overrides, ``split``
            ``"all"`` on new data, ``"test"`` on the run's own.
        new_data: whether the market is another than the run's.
        name: the data's name (:func:`data_name`): the directory its results go to.
    """

    overrides: EnvOverrides
    env_kwargs: dict[str, Any]
    new_data: bool
    name: str


def parse_env_overrides(args: Sequence[str]) -> EnvOverrides:
    """Read ``env=NAME`` / ``env.KEY=VALUE`` overrides (Hydra's syntax: ``null``, numbers,
    quoted strings) and check each key (see the module docstring).

    Raises:
        ConfigError: an override that does not parse, a sweep (``a,b``), two ``env=``, or a key
            a backtest refuses or does not know; the message names it and says why.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    group: str | None = None
    data: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    for arg in args:
        try:
            (override,) = OverridesParser.create().parse_overrides([arg])
            value = override.value()
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{arg}: cannot be read ({first})") from None
        if override.is_sweep_override():
            raise ConfigError(f"{arg}: a backtest takes one value, not a sweep; pick one")
        full = override.key_or_group
        if full != "env" and not full.startswith("env."):
            raise ConfigError(f"{arg}: not an env override (env=NAME or env.KEY=VALUE)")
        key = full.removeprefix("env").removeprefix(".")
        if not key:
            if group is not None or not isinstance(value, str):
                raise ConfigError(f"{arg}: give one env config by name (env=googl, env=csv)")
            group = value
        elif key in POLICY_KEYS:
            raise ConfigError(
                f"{arg}: the policy fixes what it observes and the actions it has "
                "(env.window_size, env.allow_short and the feature scale are saved with it); "
                "drop it"
            )
        elif key in EVALUATION_KEYS:
            why = (
                "no evaluation metric reads the reward"
                if key == "reward"
                else "an evaluation scores every row of new data, or the run's own test split"
            )
            raise ConfigError(f"{arg}: {why}; drop it")
        elif key.startswith("data."):
            sub = key.removeprefix("data.")
            if sub not in DATA_KEYS:
                from finsense.config import unknown_key

                raise unknown_key(sub, "env.data", [k for k in DATA_KEYS if k not in SPLIT_KEYS])
            data[sub] = value
        elif key in RULE_KEYS:
            rules[key] = value
        else:
            from finsense.config import unknown_key

            known = [*RULE_KEYS, "data.path"]
            error = unknown_key(key, "env", known)
            if key in ("data", "_target_") or "." in key:  # a node, or deeper than one
                error = ConfigError(
                    f"{arg}: a backtest sets env=NAME, env.data.KEY or one of "
                    f"{', '.join('env.' + k for k in RULE_KEYS)}"
                )
            raise error
    return EnvOverrides(tuple(args), group, data, rules)


def env_group_market(name: str) -> dict[str, Any]:
    """The ``data`` section of the env config ``conf/env/NAME.yaml``, composed as the train
    command's ``env=NAME`` composes it.

    Raises:
        ConfigError: no such env config, or not a trading env's.
    """
    from omegaconf import OmegaConf

    from finsense.runs import compose_config

    try:
        composed = compose_config([f"env={name}"])
    except ConfigError:
        from importlib import resources

        names = sorted(
            f.name.removesuffix(".yaml")
            for f in resources.files("finsense.conf").joinpath("env").iterdir()
            if f.name.endswith(".yaml")
        )
        raise ConfigError(
            f"env={name}: no such env config (conf/env/{name}.yaml); the env configs are "
            f"{', '.join(names)}"
        ) from None
    env = OmegaConf.to_container(composed.env, resolve=True)
    assert isinstance(env, dict)
    target = str(env.get("_target_", ""))
    if target.rsplit(".", 1)[-1] != "TradingEnv" or not isinstance(env.get("data"), dict):
        raise ConfigError(
            f"env={name}: a backtest runs the policy on a trading env's prices, and "
            f"env={name} builds {target or 'no TradingEnv'}; use env=csv, env=googl or "
            "env=synthetic"
        )
    return {str(k): v for k, v in env["data"].items()}


def backtest_env(run_env: Mapping[str, Any], overrides: EnvOverrides) -> Backtest:
    """The env of a backtest: ``run_env`` (the run's test-split env kwargs, from
    :func:`finsense.evaluation.run_env_kwargs`) with ``overrides`` applied; ``split`` is
    ``"all"`` when the market differs from the run's (see the module docstring).

    Raises:
        ConfigError: ``env=NAME`` names no trading env config.
    """
    run_market = dict(run_env.get("data") or {})
    market = dict(run_market)
    if overrides.group is not None:
        market = env_group_market(overrides.group)
    elif "path" in overrides.data and market.get("source") != "file":
        market = {"source": "file"}  # a file's default columns, as env=csv
    market.update(overrides.data)
    new_data = _market_key(market) != _market_key(run_market)
    kwargs = {**run_env, **overrides.rules, "data": market, "split": "all" if new_data else "test"}
    return Backtest(overrides, kwargs, new_data, data_name(market))


def _market_key(market: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two ``env.data`` sections the same prices: all but the split fractions, a
    file's path resolved."""
    key = {k: v for k, v in market.items() if k not in SPLIT_KEYS and v is not None}
    key["source"] = key.get("source") or "synthetic"
    if key["source"] == "file" and key.get("path"):
        key["path"] = str(Path(str(key["path"])).expanduser().resolve())
    return key


def data_name(market: Mapping[str, Any]) -> str:
    """A short name of an ``env.data`` section, safe as a directory name: a file's stem
    (``new`` for ``data/new.csv``), a sample's name in lower case (``googl``), or
    ``synthetic-seed<N>``."""
    source = market.get("source") or "synthetic"
    if source == "file":
        name = Path(str(market.get("path") or "file")).stem
    elif source == "sample":
        name = str(market.get("sample") or "GOOGL").lower()
    else:
        seed = market.get("seed")
        name = str(source) if seed is None else f"{source}-seed{seed}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def results_dir(run_dir: Path, name: str) -> Path:
    """Where a backtest on data ``name`` writes: ``run_dir/eval/backtest/<name>``."""
    from finsense.evaluation import EVAL_DIR

    return Path(run_dir) / EVAL_DIR / BACKTEST_DIR / name
