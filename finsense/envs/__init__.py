"""Gymnasium trading environments; :func:`register_envs` makes ``finsense/Trading-v0`` available."""

from __future__ import annotations

import gymnasium

from finsense.envs.trading import TradingEnv

#: The id users pass to ``gymnasium.make``.
TRADING_ENV_ID = "finsense/Trading-v0"


def register_envs() -> None:
    """Register ``finsense/Trading-v0`` with gymnasium (safe to call more than once)."""
    if TRADING_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=TRADING_ENV_ID, entry_point="finsense.envs.trading:TradingEnv")


__all__ = ["TRADING_ENV_ID", "TradingEnv", "register_envs"]
