"""Config composition, validation and run-directory naming (no training)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import finsense.train  # noqa: F401  (registers the schema and the run-dir resolvers)
from finsense import components
from finsense.config import EPISODE_METRIC_NAMES, check_metric_name, validate
from finsense.errors import ConfigError
from finsense.train import run_dirname, sweep_dirname, translate_guide_flags
from finsense.trainer import config_drift


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="finsense.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _build(cfg: DictConfig) -> None:
    """Validate and build the components, as ``finsense.train`` does before any work."""
    validate(cfg)
    env = components.build_env(cfg)
    check_metric_name(cfg, components.episode_metric_names(env))
    components.build_agent(cfg, env)


def test_default_config_has_the_guides_checkpoint_defaults() -> None:
    cfg = _compose()
    validate(cfg)
    assert cfg.episodes == 300 and cfg.resume == "auto"
    assert dict(cfg.checkpoints) == {
        "save_frequency": 10,
        "max_keep": 5,
        "save_best": True,
        "metric_name": None,  # the env's main metric: total_profit for trading envs
        "mode": "max",
        "save_every_minutes": None,
        "remote": None,  # checkpoints stay local unless a URL is given
    }
    assert check_metric_name(cfg, EPISODE_METRIC_NAMES) == "total_profit"
    assert cfg.agent.network.hidden_sizes == [64, 64]
    assert cfg.env.data.source == "synthetic"


@pytest.mark.parametrize("env", ["synthetic", "googl", "csv"])
def test_every_env_preset_composes(env: str) -> None:
    cfg = _compose(f"env={env}", *(["env.data.path=x.csv"] if env == "csv" else []))
    assert cfg.env.window_size == 30 and cfg.env._target_ == "finsense.envs.TradingEnv"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("episodes=-5", "episodes"),
        ("checkpoints.max_keep=0", "checkpoints.max_keep"),
        ("checkpoints.save_frequency=0", "checkpoints.save_frequency"),
        ("checkpoints.mode=up", "checkpoints.mode"),
        ("checkpoints.metric_name=alpha", "checkpoints.metric_name"),
        ("agent.learning_rate=-1", "agent.learning_rate"),
        ("agent.gamma=1.5", "agent.gamma"),
        ("agent.network.hidden_sizes=[]", "agent.network.hidden_sizes"),
        ("env.fee=-0.1", "env.fee"),
        ("env.window_size=0", "env.window_size"),
        ("env.data.test_fraction=1.0", "env.data.test_fraction"),
        ("env.data.source=ftp", "env.data.source"),
    ],
)
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        _build(_compose(override))
    assert "\n" not in str(info.value)


def test_held_out_metrics_are_valid_only_for_an_env_with_that_split() -> None:
    names = EPISODE_METRIC_NAMES
    cfg = _compose("checkpoints.metric_name=val_sharpe_ratio")
    assert check_metric_name(cfg, names, ("val", "test")) == "val_sharpe_ratio"
    with pytest.raises(ConfigError, match="env.data.val_fraction > 0"):
        check_metric_name(cfg, names, ("test",))
    cfg = _compose("checkpoints.metric_name=test_sharpe_ratio")
    assert check_metric_name(cfg, names, ("val", "test")) == "test_sharpe_ratio"
    with pytest.raises(ConfigError, match="test_\\* metrics need a trading env"):
        check_metric_name(cfg, names)


def test_the_default_best_metric_is_validation_profit_where_there_is_a_validation_split() -> None:
    cfg = _compose()
    assert cfg.checkpoints.metric_name is None
    assert check_metric_name(cfg, EPISODE_METRIC_NAMES, ("val", "test")) == "val_total_profit"
    assert check_metric_name(cfg, EPISODE_METRIC_NAMES, ("test",)) == "total_profit"
    assert check_metric_name(cfg, ("episode_return", "episode_length")) == "episode_return"


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises(Exception, match="episodes"):
        _compose("episodes=many")


def test_run_dirname_is_stable_flat_and_never_empty() -> None:
    assert run_dirname(None, "") == "default"
    assert run_dirname(None, None) == "default"
    assert run_dirname("exp", "") == "exp"
    assert run_dirname(None, "seed=1") == "seed=1"
    with_path = run_dirname(None, "env.data.path=data/prices.csv,env=csv")
    assert "/" not in with_path and with_path == run_dirname(
        None, "env.data.path=data/prices.csv,env=csv"
    )
    assert with_path != run_dirname(None, "env.data.path=data_prices.csv,env=csv")
    long = run_dirname(None, "x=" + "a" * 500)
    assert len(long) <= 200 and long == run_dirname(None, "x=" + "a" * 500)
    assert long != run_dirname(None, "x=" + "a" * 499)
    assert run_dirname(None, "..") not in (".", "..")
    assert sweep_dirname(None) == "sweep" and sweep_dirname("lr") == "lr"
    # How a run is logged is not what it trains: logger.* keys never name it.
    logged = "+logger.wandb.tags=[a,b],agent.gamma=0.9,logger.wandb.mode=offline,x=[1,2]"
    assert run_dirname(None, logged) == "agent.gamma=0.9,x=[1,2]"
    assert run_dirname(None, "logger.wandb.mode=offline") == "default"


def test_run_dir_ignores_keys_that_do_not_change_the_experiment() -> None:
    text = (files("finsense.conf") / "config.yaml").read_text()
    hydra_cfg = yaml.safe_load(text)["hydra"]
    excluded = set(hydra_cfg["job"]["config"]["override_dirname"]["exclude_keys"])
    for key in ("episodes", "resume", "device", "checkpoints.max_keep", "checkpoints.metric_name"):
        assert key in excluded
    assert "seed" not in excluded and "agent.learning_rate" not in excluded
    assert hydra_cfg["run"]["dir"].startswith("outputs/")
    assert hydra_cfg["sweep"]["dir"].startswith("multirun/")


def test_guide_flags_become_overrides() -> None:
    assert translate_guide_flags(["--auto-resume", "--episodes", "5"]) == [
        "resume=auto",
        "episodes=5",
    ]
    assert translate_guide_flags(["--resume", "models/model_ep200.pt"]) == [
        "resume=models/model_ep200.pt"
    ]
    assert translate_guide_flags(["--resume=auto", "seed=3"]) == ["resume=auto", "seed=3"]


def test_guide_config_file_becomes_overrides_before_the_command_line(tmp_path: Path) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = tmp_path / "config.yaml"
    config.write_text(
        "checkpoints:\n  save_frequency: 10\n  max_keep: 5\n  metric_name: total_profit\n"
        "agent:\n  hidden_sizes: [32, 16]\n  dueling: false\n  learning_rate: 0.0005\n"
        "seed: 7\nname: null\nenv: googl\n"
    )
    out = translate_guide_flags(["--config", str(config), "--verbose", "seed=1"])
    assert out == [
        "checkpoints.save_frequency=10",
        "checkpoints.max_keep=5",
        "checkpoints.metric_name=total_profit",
        "agent.hidden_sizes=[32,16]",
        "agent.dueling=false",
        "agent.learning_rate=0.0005",
        "name=null",
        "env=googl",
        "hydra.verbose=finsense",
        "seed=1",  # the command line wins over the file
    ]
    OverridesParser.create().parse_overrides(out)  # all valid override syntax
    assert translate_guide_flags([f"--config={config}"])[:1] == ["checkpoints.save_frequency=10"]


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read it"), ("a: [1", "not valid YAML (line 1)"), ("- 1\n", "not a list")],
)
def test_a_bad_guide_config_file_is_one_line(
    tmp_path: Path, content: str | None, says: str
) -> None:
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(says)):
        translate_guide_flags(["--config", str(config)])


def test_version_line_names_finsense_torch_and_hydra() -> None:
    from finsense import __version__
    from finsense.train import version_line

    line = version_line()
    assert line.startswith(f"finsense {__version__} (torch 2.") and "hydra-core 1.3" in line


def test_config_drift_refuses_the_keys_the_components_name() -> None:
    saved = {
        "agent": {"network": {"hidden_sizes": [64, 64]}, "learning_rate": 0.001},
        "env": {"window_size": 30},
        "episodes": 300,
    }
    current = {
        "agent": {"network": {"hidden_sizes": [128]}, "learning_rate": 0.0003},
        "env": {"window_size": 30},
        "episodes": 500,
    }
    keys = ("agent.network", "env.window_size")
    structural, other = config_drift(saved, current, keys)
    assert structural == ["agent.network.hidden_sizes: [64, 64] -> [128]"]
    assert other == ["agent.learning_rate: 0.001 -> 0.0003"]  # episodes: not the experiment
    assert config_drift(saved, current) == ([], sorted([*structural, *other]))


def test_guide_resume_flag_quotes_paths_with_override_characters() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = "outputs/agent.gamma=0.9,seed=1/models/model_ep4.pt"
    (override,) = translate_guide_flags(["--resume", path])
    parsed = OverridesParser.create().parse_overrides([override])[0]
    assert parsed.key_or_group == "resume" and parsed.value() == path


def test_agent_config_holds_every_dqn_hyperparameter_so_each_can_be_overridden() -> None:
    from dataclasses import fields

    from finsense.agents import DQNConfig

    cfg = _compose("agent.reward_scale=7", "agent.network.hidden_sizes=[16,8]")
    network_keys = {"hidden_sizes", "dueling"}
    expected = {f.name for f in fields(DQNConfig)} - network_keys
    assert set(cfg.agent) == expected | {"_target_", "network", "optimizer"}
    assert set(cfg.agent.network) == network_keys | {"_target_", "_partial_"}
    assert cfg.agent.reward_scale == 7 and list(cfg.agent.network.hidden_sizes) == [16, 8]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+agent.learing_rate=0.5", "agent.learing_rate is not a key of agent"),
        ("++agent.learing_rate=0.5", "did you mean agent.learning_rate?"),
        ("+foo=1", "foo is not a config key; remove it (the keys are: agent, env, logger, "),
        ("+seeed=1", "seeed is not a config key (did you mean seed?)"),
        ("+env.windowsize=5", "env.windowsize is not a key of env (did you mean env.window_size?)"),
        ("+env.data.sorce=file", "did you mean env.data.source?"),
        ("+checkpoints.max_kept=3", "did you mean checkpoints.max_keep?"),
        (
            "+agent.zzz=1",
            "agent.zzz is not a key of agent; remove it (the keys are: learning_rate, ",
        ),
        ("+agent.network.widths=[3]", "agent.network.widths is not a key of agent.network"),
        (
            "+agent.optimizer.lr=0.1",
            "agent.optimizer.lr: set the learning rate with agent.learning",
        ),
    ],
)
def test_keys_added_with_plus_are_checked_against_the_schema(override: str, message: str) -> None:
    # Hydra's '+'/'++' force-add bypasses the struct flag and the dataclass schema by design;
    # the components check their own keys when they are built.
    cfg = _compose(override)
    with pytest.raises(ConfigError) as info:
        _build(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_suggestion_uses_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"\(did you mean agent\.learning_rate\?\)$"):
        _build(_compose("+agent.learing_rate=0.5"))


def test_hydra_key_is_allowed_in_a_composed_config() -> None:
    with initialize_config_module(config_module="finsense.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert "hydra" in cfg
    validate(cfg)


@pytest.mark.parametrize(
    "preset",
    [
        "hydra/launcher=local",
        "hydra/launcher=parallel",
        "hydra/launcher=slurm",
        "hydra/sweeper=search",
    ],
)
def test_hydra_presets_still_validate(preset: str) -> None:
    with initialize_config_module(config_module="finsense.conf", version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=[preset], return_hydra_config=True)
        except Exception as err:  # the launcher and sweeper plugins are optional extras
            pytest.skip(f"{preset} needs its plugin: {err}")
    validate(cfg)


def test_batch_size_must_fit_the_buffer() -> None:
    with pytest.raises(
        ConfigError, match=r"agent\.batch_size=128 must be <= agent\.buffer_size=100"
    ):
        _build(_compose("agent.batch_size=128", "agent.buffer_size=100"))
    _build(_compose("agent.batch_size=100", "agent.buffer_size=100"))


def test_learning_starts_below_batch_size_is_allowed() -> None:
    # Sampling is with replacement from whatever is stored, so learning may start at once.
    _build(_compose("agent.learning_starts=0", "agent.batch_size=64"))


def test_missing_value_is_a_config_error_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match=r"agent\.gamma has no value"):
        validate(_compose("agent.gamma=???"))
