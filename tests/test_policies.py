"""The checkpoint store's policies: when a checkpoint is due, which ones stay."""

from __future__ import annotations

import math

import pytest

from finsense.checkpoint.policies import RetentionPolicy, SavePolicy
from finsense.errors import ConfigError


@pytest.mark.parametrize(
    ("episode", "final", "signalled", "seconds", "due"),
    [
        (10, False, False, 0.0, True),  # on the grid
        (11, False, False, 0.0, False),
        (11, True, False, 0.0, True),  # the last episode
        (11, False, True, 0.0, True),  # a stop signal
        (11, False, False, 119.9, False),
        (11, False, False, 120.0, True),  # two minutes since the last save
    ],
)
def test_a_save_is_due_on_the_grid_at_the_end_on_a_signal_and_after_the_minutes(
    episode: int, final: bool, signalled: bool, seconds: float, due: bool
) -> None:
    policy = SavePolicy(every_episodes=10, every_minutes=2.0)
    assert policy.due(episode, final=final, signalled=signalled, seconds_since_save=seconds) is due


def test_without_minutes_time_never_makes_a_save_due() -> None:
    policy = SavePolicy(every_episodes=10)
    assert not policy.due(7, final=False, signalled=False, seconds_since_save=1e9)


def test_retention_keeps_the_newest_and_always_the_one_just_saved() -> None:
    policy = RetentionPolicy(max_keep=3)
    assert policy.kept([50, 40, 30, 20, 10], newest=50) == {50, 40, 30}
    # A save of an older episode (training went back) keeps it and the newest others.
    assert policy.kept([50, 40, 30, 20], newest=20) == {20, 50, 40}
    assert RetentionPolicy(max_keep=1).kept([30, 20], newest=30) == {30}


def test_better_is_strict_follows_the_mode_and_nan_never_improves() -> None:
    high, low = RetentionPolicy(mode="max"), RetentionPolicy(mode="min")
    assert high.better(2.0, 1.0) and not high.better(1.0, 1.0) and not high.better(0.5, 1.0)
    assert low.better(0.5, 1.0) and not low.better(2.0, 1.0)
    assert not high.better(math.nan, 1.0) and not low.better(math.nan, 1.0)
    ranked = sorted([(1.0, 3), (2.0, 1), (2.0, 2)], key=lambda c: high.ranking_key(*c))
    assert ranked[-1] == (2.0, 2)  # the best value, the newer episode on a tie
    ranked = sorted([(1.0, 3), (2.0, 1)], key=lambda c: low.ranking_key(*c))
    assert ranked[-1] == (1.0, 3)


def test_metric_of_reads_the_metric_and_names_the_others_when_missing() -> None:
    policy = RetentionPolicy(metric_name="sharpe_ratio")
    assert policy.metric_of({"metrics": {"sharpe_ratio": 1.5}}) == 1.5
    assert math.isnan(policy.metric_of({"metrics": {"sharpe_ratio": None}}))
    with pytest.raises(ConfigError, match="use one of: total_profit, win_rate"):
        policy.metric_of({"metrics": {"total_profit": 1.0, "win_rate": 0.5}})
    with pytest.raises(ConfigError, match="not a number"):
        policy.metric_of({"metrics": {"sharpe_ratio": "high"}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_keep": 0}, "checkpoints.max_keep=0: must be an integer >= 1"),
        ({"max_keep": True}, "checkpoints.max_keep=True"),
        ({"mode": "best"}, "checkpoints.mode='best': must be 'max' or 'min'"),
        ({"metric_name": ""}, "checkpoints.metric_name='': must name a metric"),
    ],
)
def test_a_bad_retention_setting_is_one_config_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RetentionPolicy(**kwargs)
