"""Where the networks run (``device``) and how many CPU threads torch may use (``threads``).

FinSense's networks are small (two hidden layers of 64 units): one gradient step is a few dozen
tiny matrix products, so what it costs is per-operation overhead, not arithmetic, and more threads
only add synchronisation. Measured on a 2-core machine (``benchmarks/train_throughput.py``,
20,000 env steps of ``finsense/Trading-v0``): FinSense's DQN ran 3.5x slower with 2 threads than
with 1 (1,485 vs 5,203 steps/s) and Stable-Baselines3's 4.5x slower (260 vs 1,157). Hence one
thread by default; raise ``threads`` for wide networks or large batches.
"""

from __future__ import annotations

import re

import torch

from finsense.errors import ConfigError

#: Torch intra-op threads when ``threads`` is not set (see the module docstring for the numbers).
DEFAULT_THREADS = 1

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str) -> torch.device:
    """The torch device named by the ``device`` key.

    Args:
        device: ``cpu``, ``cuda`` (the current CUDA device), ``cuda:N`` or ``auto`` (CUDA when
            available, else CPU).

    Raises:
        ConfigError: the name is none of the above, or CUDA is asked for but not available
            (or ``N`` is not a visible device).
    """
    name = str(device).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = _CUDA.fullmatch(name)
    if match is None:
        raise ConfigError(f"device={device!r} is not a device; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} requested but CUDA is not available (no GPU, driver or CUDA build "
            "of torch); use device=cpu"
        )
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device={device} requested but only {count} CUDA device(s) are visible; "
                f"use device=cuda:0..{count - 1} or device=cpu"
            )
    return torch.device(name)


def set_torch_threads(n: int | None) -> None:
    """Set torch's intra-op thread count: ``n``, or :data:`DEFAULT_THREADS` when ``None``.

    Raises:
        ConfigError: ``n`` is not a positive integer.
    """
    threads = DEFAULT_THREADS if n is None else n
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or null, got {n!r}")
    torch.set_num_threads(threads)
