"""FinSense: reinforcement-learning trading agents that never lose a run.

Importing the package registers the gymnasium environment ``finsense/Trading-v0``.
"""

from __future__ import annotations

import sys

_argv0 = (getattr(sys, "argv", None) or [""])[0]
if _argv0 == "-m" or _argv0.rpartition("/")[2].startswith("finsense-"):
    # A command line tool is starting (``python -m finsense.<tool>`` being located, or a
    # ``finsense-*`` script): Ctrl+C while the heavy imports run ends quietly (each tool's
    # main() restores the usual KeyboardInterrupt).
    from finsense.cli import exit_quietly_on_interrupt

    exit_quietly_on_interrupt()

from finsense.envs import register_envs  # noqa: E402 (after the interrupt handler)

__version__ = "0.1.0"

register_envs()

__all__ = ["__version__"]
