"""FinSense: reinforcement-learning trading agents that never lose a run.

Importing the package registers the gymnasium environment ``finsense/Trading-v0``.
"""

from __future__ import annotations

from finsense.envs import register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["__version__"]
