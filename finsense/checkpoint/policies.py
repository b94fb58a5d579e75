"""When to save and what to keep: the store's policies, apart from its file I/O.

As Orbax keeps its save and preservation policies apart from its checkpointers, and Lightning its
checkpoint policy apart from checkpoint I/O: :class:`SavePolicy` says when a checkpoint is due
(the trainer asks it after every episode), :class:`RetentionPolicy` which checkpoints stay (the
store applies it after every save). Neither touches a file or imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from finsense.errors import ConfigError

#: ``RetentionPolicy.mode`` values.
MODES = ("max", "min")


@dataclass(frozen=True)
class SavePolicy:
    """A checkpoint is due every ``every_episodes`` episodes, when ``every_minutes`` have passed
    since the last save, after the last episode and on a stop signal.

    Args:
        every_episodes: ``checkpoints.save_frequency`` (>= 1).
        every_minutes: ``checkpoints.save_every_minutes``, or None for no time-based saves.
    """

    every_episodes: int = 10
    every_minutes: float | None = None

    def due(self, episode: int, *, final: bool, signalled: bool, seconds_since_save: float) -> bool:
        """Whether the checkpoint of ``episode`` (just finished) is to be saved."""
        return (
            episode % self.every_episodes == 0
            or final
            or signalled
            or (self.every_minutes is not None and seconds_since_save >= 60.0 * self.every_minutes)
        )


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the ``max_keep`` newest episodic checkpoints and, with ``keep_best``, the best one by
    ``metric_name`` (``mode`` max: higher is better).

    Raises:
        ConfigError: ``max_keep``, ``mode`` or ``metric_name`` is invalid (on construction).
    """

    max_keep: int = 5
    keep_best: bool = True
    metric_name: str = "total_profit"
    mode: str = "max"

    def __post_init__(self) -> None:
        max_keep = self.max_keep
        if isinstance(max_keep, bool) or not isinstance(max_keep, int) or max_keep < 1:
            raise ConfigError(
                f"checkpoints.max_keep={max_keep!r}: must be an integer >= 1 "
                "(how many episodic checkpoints to keep)"
            )
        if self.mode not in MODES:
            raise ConfigError(f"checkpoints.mode={self.mode!r}: must be 'max' or 'min'")
        if not isinstance(self.metric_name, str) or not self.metric_name:
            raise ConfigError(
                f"checkpoints.metric_name={self.metric_name!r}: must name a metric, "
                "e.g. total_profit"
            )

    def kept(self, saved: Iterable[int], newest: int) -> set[int]:
        """The episodes to keep among ``saved`` (newest first), ``newest`` (just saved) always."""
        others = [e for e in saved if e != newest]
        return {newest, *others[: self.max_keep - 1]}

    def metric_of(self, metadata: Mapping[str, Any]) -> float:
        """``metadata["metrics"][metric_name]`` as a float (nan for None or NaN).

        Raises:
            ValueError: ``metadata`` has no ``metrics`` dict.
            ConfigError: the metric is missing or not a number (one line naming the others).
        """
        metrics = metadata.get("metrics") if isinstance(metadata, Mapping) else None
        if not isinstance(metrics, Mapping):
            raise ValueError("metadata must hold a 'metrics' dict")
        if self.metric_name not in metrics:
            available = ", ".join(sorted(map(str, metrics))) or "none"
            raise ConfigError(
                f"checkpoints.metric_name={self.metric_name!r} is not a metric of the episodes; "
                f"use one of: {available}"
            )
        value = metrics[self.metric_name]
        if value is None:
            return math.nan
        try:
            if isinstance(value, bool | str):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"checkpoints.metric_name={self.metric_name!r}: the metric is not a number "
                f"({value!r}); choose a numeric metric"
            ) from None

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` improves on ``than`` (strictly; nan never does)."""
        if math.isnan(value):
            return False
        return value > than if self.mode == "max" else value < than

    def ranking_key(self, value: float, episode: int) -> tuple[float, int]:
        """Sort key, best first with ``reverse=True``: the value, then the newer episode."""
        return (value if self.mode == "max" else -value, episode)
