"""Env steps per second: FinSense's TradingEnv beside a bare numpy loop and gym-anytrading.

All three trade the shipped GOOGL sample (2,335 daily closes) with a window of 30 and the same
pre-generated random actions (``action_space.sample()`` alone costs more than a step):

- ``numpy floor``: the same accounting (the default ``execution=next_close``: mark, borrow on a
  short, then fill at the close, with fee and slippage) and the same observation copy as
  ``TradingEnv.step``, as a plain loop with local variables: no env object, no info dict, no
  history. The speed limit.
- ``finsense``: ``TradingEnv`` unwrapped, one episode over every row (``split="all"``), like the
  peer; also ``gymnasium.make`` (with its wrappers) and the default config's 252-step episodes.
- ``gym-anytrading stocks-v0``: unwrapped, window 30, when the package is installed.

Resets (and the end-of-episode metrics) are inside the timed loop for every row. The rows run
in turn for ``--repeats`` rounds and each keeps its best time.
Usage: ``python benchmarks/env_throughput.py [--steps N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable

import gymnasium
import numpy as np

import finsense  # noqa: F401  (registers finsense/Trading-v0)
from finsense.data import sample_prices
from finsense.envs import TradingEnv

WINDOW = 30
FLOOR = "numpy floor (same work, bare loop)"
PEER = "gym-anytrading stocks-v0 (unwrapped)"


def time_env(env: gymnasium.Env, actions: list[int]) -> float:
    """Seconds to run ``actions`` through ``env``, resetting whenever an episode ends."""
    step, reset = env.step, env.reset
    reset(seed=0)
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            reset()
    return time.perf_counter() - started


def time_numpy_floor(env: TradingEnv, actions: list[int]) -> float:
    """Seconds for a bare loop doing TradingEnv's per-step work on the env's own arrays."""
    # The env's own split-local close prices and observation tables (see TradingEnv.__init__).
    close = env._close
    tables = [table for _, table in env._actions.values()]
    positions = [position for position, _ in env._actions.values()]
    end = env.episode_length
    cost, borrow = env.trade_cost, env.borrow_rate / 252
    log = math.log
    started = time.perf_counter()
    t, cash, units, position, equity = 0, env.initial_cash, 0.0, 0, env.initial_cash
    for action in actions:
        target = positions[action]
        t += 1
        price = close[t]
        if units < 0.0:
            cash += borrow * units * price
        if target != position and t != end:
            if units != 0.0:
                notional = units * price
                cash += notional - cost * abs(notional)
                units = 0.0
            if target != 0:
                size = cash / (1.0 + cost)
                units = target * size / price
                cash -= target * size + cost * size
            position = target
        new_equity = cash + units * close[t]
        _reward = log(new_equity / equity)
        equity = new_equity
        _obs = tables[action][t].copy()
        if t == end:
            t, cash, units, position, equity = 0, env.initial_cash, 0.0, 0, env.initial_cash
    return time.perf_counter() - started


def main() -> None:
    """Print a table of steps per second, the references side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each row keeps its best")
    args = parser.parse_args()

    data = sample_prices("GOOGL")
    env = TradingEnv(data, split="all", window_size=WINDOW, episode_length=None, random_start=False)
    made = gymnasium.make(
        "finsense/Trading-v0", data=data, split="all", window_size=WINDOW, random_start=False
    )
    default = TradingEnv(episode_length=252)
    actions = np.random.default_rng(0).integers(0, 2, size=args.steps).tolist()
    candidates: dict[str, Callable[[], float]] = {
        FLOOR: lambda: time_numpy_floor(env, actions),
        "finsense TradingEnv (unwrapped)": lambda: time_env(env, actions),
        "finsense via gymnasium.make (wrappers)": lambda: time_env(made, actions),
        "finsense synthetic, 252-step episodes": lambda: time_env(default, actions),
    }
    try:
        import gym_anytrading  # noqa: F401

        peer = gymnasium.make("stocks-v0").unwrapped
        candidates[PEER] = lambda: time_env(peer, actions)
    except ImportError:
        pass

    # Rounds of every row in turn, so a slow spell on a shared machine hits all rows alike.
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(args.repeats):
        for name, run in candidates.items():
            best[name] = min(best[name], run())

    speed = {name: args.steps / seconds for name, seconds in best.items()}
    print(
        f"env throughput: {args.steps} random-action steps, window {WINDOW}, GOOGL sample, "
        f"best of {args.repeats} rounds"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"gymnasium {gymnasium.__version__}"
    )
    peer_speed = speed.get(PEER)
    header = f"{'':42} {'steps/s':>10} {'us/step':>8} {'floor/x':>8}"
    print(header + (f" {'x/peer':>7}" if peer_speed else ""))
    for name, steps_per_second in speed.items():
        line = (
            f"{name:42} {steps_per_second:>10,.0f} {1e6 / steps_per_second:>8.2f} "
            f"{speed[FLOOR] / steps_per_second:>8.2f}"
        )
        print(line + (f" {steps_per_second / peer_speed:>7.2f}" if peer_speed else ""))
    if not peer_speed:
        print("(gym-anytrading not installed: pip install gym-anytrading to add the peer)")


if __name__ == "__main__":
    main()
