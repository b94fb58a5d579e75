"""Training speed: FinSense's DQN and PPO beside Stable-Baselines3's, env steps per second.

All train on ``finsense/Trading-v0`` (default synthetic market, window 30, 252-step episodes), one
env, CPU, one torch thread (``--threads``). Each algorithm has its own budget and the same
hyperparameters on both sides.

DQN (``--algos dqn``; 20,000 env steps, ``--steps``): net [64, 64], buffer 50,000, learning_starts
1,000, batch 64, train_freq 4, gradient_steps 1, target update 1,000, learning rate 1e-3, gamma
0.99, epsilon 1.0 -> 0.05, Huber loss, Adam, grad-norm clip 10. FinSense runs twice: ``finsense``
with the default ``agent.learner=auto`` (for this MLP and Adam, the hand-written fast path) and
``finsense-autograd`` with ``agent.learner=autograd`` (the general path every other network takes:
autograd and ``torch.optim.Adam``); SB3's is ``sb3``.

PPO (``--algos ppo``; 20,480 env steps = 10 rollouts, ``--ppo-steps``): n_steps 2,048, batch 64,
n_epochs 10, learning rate 3e-4, gamma 0.99, gae_lambda 0.95, clip 0.2, ent_coef 0, vf_coef 0.5,
max_grad_norm 0.5, advantages normalised per minibatch, Adam with eps 1e-5 (SB3's), rewards
unscaled. The same network on both sides: separate actor and critic MLPs, [64, 64] tanh each, one
logit per action and one value, orthogonal init (sqrt 2 hidden, 0.01 policy, 1 value).

- ``finsense-ppo``: ``PPOAgent`` with ``ActorCriticMLP(obs_dim, n_actions, hidden_sizes=(64, 64),
  shared=False)`` (not the agent's default ``shared=True``, one trunk for both heads, which SB3's
  ``MlpPolicy`` does not build unless asked), with the default ``agent.learner=auto`` (for this
  network and Adam, the hand-written fast path and numpy acting);
- ``finsense-ppo-autograd``: the same with ``agent.learner=autograd`` (autograd and
  ``torch.optim.Adam``, torch acting: the path any other network takes);
- ``sb3-ppo``: ``PPO("MlpPolicy", env, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64,
  64]), activation_fn=nn.Tanh))``, SB3's default policy (its features extractor, shared, is a
  ``Flatten``: no weights).

Each run is a separate Python process, and the implementations alternate (finsense,
finsense-autograd, sb3, finsense-ppo, finsense-ppo-autograd, sb3-ppo, finsense, ...) so that
drift in machine load hits all alike. Two speeds per run:

- ``train``: env steps / seconds of the training loop itself (acting, env steps, storing,
  learning), measured inside the process;
- ``process``: env steps / wall seconds of the whole process, interpreter start and imports
  included, measured by this script.

FinSense's loop is the trainer's episode loop (``Trainer.run_episode``: act, step, observe,
end_episode, env reseeded per episode) without checkpoint writes; SB3's is ``DQN.learn`` /
``PPO.learn`` with its default ``Monitor``/``DummyVecEnv`` wrapping (one env), as a user gets it.
The ratio column is FinSense's speed over the row's, for the same algorithm (``finsense`` for DQN
rows, ``finsense-ppo`` for PPO rows).

Usage::

    python benchmarks/train_throughput.py [--steps 20000] [--ppo-steps 20480] [--rounds 3]
    python benchmarks/train_throughput.py --algos ppo       # PPO rows only
    python benchmarks/train_throughput.py --threads 1 2     # also compare thread counts
    python benchmarks/train_throughput.py --impls finsense  # only the default DQN learner

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
#: PPO hyperparameters: the same names in ``PPOConfig`` and SB3's ``PPO``.
PPO_HYPER: dict[str, Any] = {
    "learning_rate": 3e-4,
    "n_steps": 2048,
    "batch_size": 64,
    "n_epochs": 10,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "normalize_advantage": True,
}
#: Adam's eps in SB3's PPO (``policy_kwargs`` default ``optimizer_kwargs={"eps": 1e-5}``).
PPO_ADAM_EPS = 1e-5
#: Actor and critic: separate MLPs of these sizes (tanh), on both sides.
PPO_HIDDEN = [64, 64]
#: Benchmark rows of each algorithm; the first is the FinSense row the ratio column divides by.
ALGOS: dict[str, tuple[str, ...]] = {
    "dqn": ("finsense", "finsense-autograd", "sb3"),
    "ppo": ("finsense-ppo", "finsense-ppo-autograd", "sb3-ppo"),
}
IMPLS = tuple(impl for impls in ALGOS.values() for impl in impls)
ALGO_OF = {impl: algo for algo, impls in ALGOS.items() for impl in impls}
SB3_IMPLS = ("sb3", "sb3-ppo")
LEARNERS = {
    "finsense": "auto",
    "finsense-autograd": "autograd",
    "finsense-ppo": "auto",
    "finsense-ppo-autograd": "autograd",
}


# -- workers (run in their own process) -----------------------------------------------------------
def finsense_loop(env: Any, agent: Any, steps: int, seed: int) -> float:
    """The trainer's episode loop (``Trainer.run_episode``, no checkpoints) until the agent has
    observed ``steps`` env steps; return its seconds."""
    from finsense.trainer import episode_seed

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


def make_env() -> tuple[Any, int, int]:
    """The benchmark env, its observation size and number of actions."""
    import gymnasium

    import finsense  # noqa: F401  (registers the env)

    env = gymnasium.make(ENV_ID, **ENV_KWARGS)
    shape, actions = env.observation_space.shape, env.action_space
    assert shape is not None and isinstance(actions, gymnasium.spaces.Discrete)
    return env, shape[0], int(actions.n)


def run_finsense(steps: int, seed: int, learner: str = "auto") -> float:
    """Train FinSense's DQN with ``agent.learner=learner`` for ``steps`` env steps; return the
    loop's seconds."""
    from finsense.agents import DQNAgent, DQNConfig

    env, obs_dim, n_actions = make_env()
    config = DQNConfig(
        **HYPER,
        hidden_sizes=tuple(HIDDEN),
        exploration_steps=int(0.1 * steps),  # SB3's default exploration_fraction is 0.1
        learner=learner,
    )
    agent = DQNAgent(obs_dim, n_actions, config, seed=seed)
    return finsense_loop(env, agent, steps, seed)


def run_finsense_ppo(steps: int, seed: int, learner: str = "auto") -> float:
    """Train FinSense's PPO (separate actor and critic MLPs) with ``agent.learner=learner`` for
    ``steps`` env steps; return the loop's seconds."""
    import torch

    from finsense.agents import PPOAgent
    from finsense.agents.ppo import ActorCriticMLP, PPOConfig

    env, obs_dim, n_actions = make_env()
    with torch.random.fork_rng(devices=[]):  # as PPOAgent.from_config builds its network
        torch.manual_seed(seed)
        network = ActorCriticMLP(obs_dim, n_actions, hidden_sizes=tuple(PPO_HIDDEN), shared=False)
    agent = PPOAgent(
        obs_dim,
        n_actions,
        PPOConfig(**PPO_HYPER, learner=learner),
        seed=seed,
        device="cpu",
        network=network,
        optimizer_kwargs={"eps": PPO_ADAM_EPS},
    )
    return finsense_loop(env, agent, steps, seed)


def run_sb3(steps: int, seed: int) -> float:
    """Train Stable-Baselines3's DQN for ``steps`` env steps; return ``learn``'s seconds."""
    from stable_baselines3 import DQN

    env, _, _ = make_env()
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


def run_sb3_ppo(steps: int, seed: int) -> float:
    """Train Stable-Baselines3's PPO (default ``MlpPolicy``: separate pi and vf MLPs) for
    ``steps`` env steps; return ``learn``'s seconds."""
    from stable_baselines3 import PPO
    from torch import nn

    env, _, _ = make_env()
    model = PPO(
        "MlpPolicy",
        env,  # wrapped by SB3 in Monitor + DummyVecEnv of one
        **PPO_HYPER,
        policy_kwargs={
            "net_arch": {"pi": list(PPO_HIDDEN), "vf": list(PPO_HIDDEN)},
            "activation_fn": nn.Tanh,
        },
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
    if impl == "sb3":
        seconds = run_sb3(steps, seed)
    elif impl == "sb3-ppo":
        seconds = run_sb3_ppo(steps, seed)
    elif impl.startswith("finsense-ppo"):
        seconds = run_finsense_ppo(steps, seed, LEARNERS[impl])
    else:
        seconds = run_finsense(steps, seed, LEARNERS[impl])
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
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per DQN run")
    parser.add_argument(
        "--ppo-steps", type=int, default=20_480, help="env steps per PPO run (10 rollouts)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each implementation")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--algos", nargs="+", choices=list(ALGOS), default=list(ALGOS), help="algorithms to run"
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(IMPLS),
        help="implementations to run (of those of --algos)",
    )
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps, args.threads[0], args.seed)
        return

    have_sb3 = importlib.util.find_spec("stable_baselines3") is not None
    wanted = [i for i in IMPLS if i in args.impls and ALGO_OF[i] in args.algos]
    if not wanted:
        parser.error(f"none of --impls {' '.join(args.impls)} is of --algos {' '.join(args.algos)}")
    impls = [i for i in wanted if i not in SB3_IMPLS or have_sb3]
    budget = {"dqn": args.steps, "ppo": args.ppo_steps}
    import torch

    print(f"{ENV_ID} {ENV_KWARGS}, one env, cpu")
    if "dqn" in args.algos:
        print(f"dqn: {args.steps:,} env steps per run, net {HIDDEN}, {HYPER}")
    if "ppo" in args.algos:
        print(
            f"ppo: {args.ppo_steps:,} env steps per run, separate actor and critic MLPs "
            f"{PPO_HIDDEN} tanh (finsense-ppo: ActorCriticMLP(shared=False); sb3-ppo: MlpPolicy "
            f"net_arch=dict(pi={PPO_HIDDEN}, vf={PPO_HIDDEN})), Adam eps {PPO_ADAM_EPS}, "
            f"{PPO_HYPER}"
        )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.processor()}")
    if any(i in SB3_IMPLS for i in wanted) and not have_sb3:
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
                speed = spawn(impl, budget[ALGO_OF[impl]], threads, args.seed)
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
    print(f"median of {args.rounds} runs; ratio: FinSense's (finsense, finsense-ppo) / the row's")
    header = f"{'threads':>7}  {'impl':<17} {'train steps/s':>14} {'process steps/s':>16}"
    print(header + "  finsense/this (train, process)")
    for threads in args.threads:
        for impl in impls:
            m = medians[impl, threads]
            line = f"{threads:>7}  {impl:<17} {m['train']:>14,.0f} {m['process']:>16,.0f}"
            reference = ALGOS[ALGO_OF[impl]][0]
            if impl != reference and reference in impls:
                fs = medians[reference, threads]
                line += f"  {fs['train'] / m['train']:.2f}x, {fs['process'] / m['process']:.2f}x"
            print(line)


if __name__ == "__main__":
    main()
