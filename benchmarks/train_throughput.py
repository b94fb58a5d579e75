"""DQN training speed: FinSense's agent beside Stable-Baselines3's DQN, env steps per second.

Both train on ``finsense/Trading-v0`` (default synthetic market, window 30, 252-step episodes)
for the same budget (20,000 env steps) with the same hyperparameters: net [64, 64], buffer
50,000, learning_starts 1,000, batch 64, train_freq 4, gradient_steps 1, target update 1,000,
learning rate 1e-3, gamma 0.99, epsilon 1.0 -> 0.05, Huber loss, Adam, grad-norm clip 10.

FinSense runs twice: ``finsense`` with the default ``agent.learner=auto`` (for this MLP and Adam,
the hand-written fast path) and ``finsense-autograd`` with ``agent.learner=autograd`` (the general
path every other network takes: autograd and ``torch.optim.Adam``).

Each run is a separate Python process, and the implementations alternate (finsense,
finsense-autograd, sb3, finsense, ...) so that drift in machine load hits all alike. Two speeds
per run:

- ``train``: env steps / seconds of the training loop itself (acting, env steps, storing,
  learning), measured inside the process;
- ``process``: env steps / wall seconds of the whole process, interpreter start and imports
  included, measured by this script.

FinSense's loop is the trainer's episode loop (``Trainer.run_episode``: act, step, observe,
end_episode, env reseeded per episode) without checkpoint writes; SB3's is ``DQN.learn`` with its
default ``Monitor``/``DummyVecEnv`` wrapping, as a user gets it.

Usage::

    python benchmarks/train_throughput.py [--steps 20000] [--rounds 3] [--threads 1]
    python benchmarks/train_throughput.py --threads 1 2     # also compare thread counts
    python benchmarks/train_throughput.py --impls finsense  # only the default learner

Stable-Baselines3 is a benchmark-only dependency (``pip install stable-baselines3``); without it
only FinSense's rows are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

ENV_ID = "finsense/Trading-v0"
ENV_KWARGS: dict[str, Any] = {"episode_length": 252}
HYPER: dict[str, Any] = {
    "learning_rate": 1e-3,
    "buffer_size": 50_000,
    "learning_starts": 1_000,
    "batch_size": 64,
    "gamma": 0.99,
    "train_freq": 4,
    "gradient_steps": 1,
    "target_update_interval": 1_000,
    "max_grad_norm": 10.0,
    "epsilon_start": 1.0,
    "epsilon_end": 0.05,
}
HIDDEN = [64, 64]
#: Benchmark rows: FinSense with its default learner, FinSense's autograd learner, SB3.
IMPLS = ("finsense", "finsense-autograd", "sb3")
LEARNERS = {"finsense": "auto", "finsense-autograd": "autograd"}


# -- workers (run in their own process) -----------------------------------------------------------
def run_finsense(steps: int, seed: int, learner: str = "auto") -> float:
    """Train FinSense's DQN with ``agent.learner=learner`` for ``steps`` env steps; return the
    loop's seconds."""
    import gymnasium

    import finsense  # noqa: F401  (registers the env)
    from finsense.agents import DQNAgent, DQNConfig
    from finsense.trainer import episode_seed

    env = gymnasium.make(ENV_ID, **ENV_KWARGS)
    shape, actions = env.observation_space.shape, env.action_space
    assert shape is not None and isinstance(actions, gymnasium.spaces.Discrete)
    config = DQNConfig(
        **HYPER,
        hidden_sizes=tuple(HIDDEN),
        exploration_steps=int(0.1 * steps),  # SB3's default exploration_fraction is 0.1
        learner=learner,
    )
    agent = DQNAgent(shape[0], int(actions.n), config, seed=seed)
    started = time.perf_counter()
    episode = 0
    while agent.steps < steps:
        episode += 1
        obs, _ = env.reset(seed=episode_seed(seed, episode))
        done = False
        while not done and agent.steps < steps:
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(obs, action, float(reward), next_obs, bool(terminated))
            obs = next_obs
            done = terminated or truncated
        agent.end_episode()
    return time.perf_counter() - started


def run_sb3(steps: int, seed: int) -> float:
    """Train Stable-Baselines3's DQN for ``steps`` env steps; return ``learn``'s seconds."""
    import gymnasium
    from stable_baselines3 import DQN

    import finsense  # noqa: F401  (registers the env)

    env = gymnasium.make(ENV_ID, **ENV_KWARGS)
    hyper = {k: v for k, v in HYPER.items() if not k.startswith("epsilon")}
    model = DQN(
        "MlpPolicy",
        env,
        **hyper,
        exploration_initial_eps=HYPER["epsilon_start"],
        exploration_final_eps=HYPER["epsilon_end"],
        exploration_fraction=0.1,
        policy_kwargs={"net_arch": HIDDEN},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    return time.perf_counter() - started


def worker(impl: str, steps: int, threads: int, seed: int) -> None:
    """Set the thread count, train, print one JSON line with the loop's seconds."""
    import torch

    torch.set_num_threads(threads)
    seconds = run_sb3(steps, seed) if impl == "sb3" else run_finsense(steps, seed, LEARNERS[impl])
    print(json.dumps({"impl": impl, "train_seconds": seconds}))


# -- the driver -----------------------------------------------------------------------------------
def spawn(impl: str, steps: int, threads: int, seed: int) -> dict[str, float]:
    """Run one worker process; return its train and whole-process speeds (steps/s)."""
    command = [sys.executable, __file__, "--worker", impl, "--steps", str(steps)]
    command += ["--threads", str(threads), "--seed", str(seed)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"train": steps / result["train_seconds"], "process": steps / wall}


def main(argv: list[str] | None = None) -> None:
    """Alternate FinSense and SB3 runs for each thread count; print every run, medians, ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each implementation")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to run"
    )
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps, args.threads[0], args.seed)
        return

    have_sb3 = importlib.util.find_spec("stable_baselines3") is not None
    impls = [i for i in args.impls if i != "sb3" or have_sb3]
    import torch

    print(f"{ENV_ID} {ENV_KWARGS}, {args.steps:,} env steps per run, net {HIDDEN}, {HYPER}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.processor()}")
    if "sb3" in args.impls and not have_sb3:
        print("stable-baselines3 not installed: FinSense only (pip install stable-baselines3)")
    print()
    print(
        f"{'threads':>7}  {'round':>5}  {'impl':<17} {'train steps/s':>14} {'process steps/s':>16}"
    )
    medians: dict[tuple[str, int], dict[str, float]] = {}
    for threads in args.threads:
        runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
        for round_ in range(1, args.rounds + 1):
            for impl in impls:
                speed = spawn(impl, args.steps, threads, args.seed)
                runs[impl].append(speed)
                print(
                    f"{threads:>7}  {round_:>5}  {impl:<17} {speed['train']:>14,.0f} "
                    f"{speed['process']:>16,.0f}",
                    flush=True,
                )
        for impl in impls:
            medians[impl, threads] = {
                kind: statistics.median(r[kind] for r in runs[impl])
                for kind in ("train", "process")
            }

    print()
    print(f"median of {args.rounds} runs")
    header = f"{'threads':>7}  {'impl':<17} {'train steps/s':>14} {'process steps/s':>16}"
    print(header + ("  finsense/this (train, process)" if "finsense" in impls else ""))
    for threads in args.threads:
        for impl in impls:
            m = medians[impl, threads]
            line = f"{threads:>7}  {impl:<17} {m['train']:>14,.0f} {m['process']:>16,.0f}"
            if impl != "finsense" and "finsense" in impls:
                fs = medians["finsense", threads]
                line += f"  {fs['train'] / m['train']:.2f}x, {fs['process'] / m['process']:.2f}x"
            print(line)


if __name__ == "__main__":
    main()
