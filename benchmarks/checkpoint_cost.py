"""What a safe checkpoint costs: ``CheckpointManager`` against a bare ``torch.save``/``torch.load``.

Usage: ``python benchmarks/checkpoint_cost.py [--repeats 15] [--dir /path/on/the/disk/to/test]``

Measures, in one run and alternating the two sides so that both see the same disk and caches:

- save and load of a DQN-sized state (MLP 30->64->64->3, its target network and Adam moments),
  without and with a 50,000-transition replay buffer: ``CheckpointManager.save`` (temporary
  files, fsync of every file and of the directory, SHA-256, JSON, best-model links, rotation)
  against a bare ``torch.save`` of the same dict to one file, without fsync (and, for reference,
  with one); ``CheckpointManager.load`` (SHA-256 verification + ``weights_only`` load) against a
  bare ``torch.load(weights_only=True)``. Target: at most 1.5x the bare save.
- ``latest()`` over a directory of 10,000 files (5,000 episodes: ``.json`` + ``.pt`` each; the
  newest three are real checkpoints, the rest empty files that the scan must never open), next to
  the bare ``os.scandir`` of that directory. Target: well under 50 ms.
- A big replay buffer (``--buffer-rows``, default 1,000,000 rows of 31-float observations: the
  real :class:`~finsense.agents.buffer.ReplayBuffer`, 264 MB) with ``--changed`` (2,500) rows
  added between saves, ``max_keep=5``: the median save with the buffer as chunks (what the
  trainer does) against the same state written whole (the store's layout before chunks) and a
  bare ``torch.save`` of it; the run directory's size over one buffer's bytes; a resume's
  ``latest()`` + ``load()`` in a new manager against a bare ``torch.load(weights_only=True)`` of
  the same tensors. Targets (issue 14): save <= 100 ms, directory <= 1.3x, load <= 1.3x bare.
- With ``--default-run``: the default 300-episode training run's ``models/`` size (a real
  ``python -m finsense.train`` in a temporary directory). Target: <= 20 MB.
- With ``--remote-s3``: the upload cost of ``checkpoints.remote`` against a local S3-compatible
  server (moto's, a subprocess on 127.0.0.1; needs ``finsense[s3]`` and ``moto[server]``): a
  buffer of ``--remote-rows`` rows, ``--changed`` rows added between saves and ``--remote-gap``
  seconds of training-like CPU work (torch, one thread) between saves, plain store against the
  mirrored one: the save call, the upload in the background, how long the trainer waited for an
  upload, and what one save-and-train cycle costs more. Target (issue 15): the cycle costs at
  most one local save more.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from finsense.agents.buffer import ReplayBuffer
from finsense.checkpoint import CheckpointManager

SIZES = [(30, 64), (64, 64), (64, 3)]


def dqn_state(gen: torch.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy, training state without buffer): q-network, target network, Adam moments."""
    q_net: dict[str, torch.Tensor] = {}
    for i, (n_in, n_out) in enumerate(SIZES):
        q_net[f"{2 * i}.weight"] = torch.randn(n_out, n_in, generator=gen)
        q_net[f"{2 * i}.bias"] = torch.randn(n_out, generator=gen)
    adam = {
        "state": {
            i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(t), "exp_avg_sq": t.abs()}
            for i, t in enumerate(q_net.values())
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "params": [0, 1, 2]}],
    }
    training = {
        "target": {k: v.clone() for k, v in q_net.items()},
        "optimizer": adam,
        "steps": 50_000,
        "rng": {"torch": torch.get_rng_state()},
    }
    return {"policy": q_net}, training


def replay_buffer(gen: torch.Generator, n: int = 50_000, obs_dim: int = 31) -> dict[str, Any]:
    return {
        "obs": torch.randn(n, obs_dim, generator=gen),
        "next_obs": torch.randn(n, obs_dim, generator=gen),
        "actions": torch.randint(0, 3, (n,), generator=gen),
        "rewards": torch.randn(n, generator=gen),
        "dones": torch.rand(n, generator=gen) < 0.01,
        "pos": n,
        "full": True,
    }


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def compare(*fns: Callable[[int], None], repeats: int) -> list[float]:
    """Median milliseconds of each of ``fns``, called in rotating order (one warm-up each)."""
    for fn in fns:
        fn(-1)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            start = time.perf_counter()
            fns[j](i)
            times[j].append(time.perf_counter() - start)
    return [median_ms(t) for t in times]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Row = tuple[str, float, float | None, float]


def bench_save_load(root: Path, repeats: int) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    policy, training = dqn_state(gen)
    rows: list[Row] = []
    for label, train in (
        ("without buffer", training),
        ("with 50k buffer", {**training, "buffer": replay_buffer(gen)}),
    ):
        work = Path(tempfile.mkdtemp(prefix="save-", dir=root))
        manager = CheckpointManager(work / "run" / "models", max_keep=5)
        bare_path = work / "bare.pt"
        combined = {"policy": policy, "training": train}

        def bare_save(i: int, combined: dict[str, Any] = combined, path: Path = bare_path) -> None:
            torch.save(combined, path)

        def bare_save_fsync(
            i: int, combined: dict[str, Any] = combined, path: Path = bare_path
        ) -> None:
            torch.save(combined, path)
            fsync_file(path)

        def ours_save(
            i: int, manager: CheckpointManager = manager, train: dict[str, Any] = train
        ) -> None:
            episode = i + 2
            metrics = {"total_profit": float(episode % 3), "sharpe_ratio": 0.1}
            manager.save(
                episode, policy, {"metrics": metrics, "epsilon": 0.05}, training_state=train
            )

        save_bare, save_fsync, save_ours = compare(
            bare_save, bare_save_fsync, ours_save, repeats=repeats
        )
        size = sum(p.stat().st_size for p in manager.models_dir.glob("model_ep*.pt"))
        size //= len(list(manager.models_dir.glob("model_ep*.json")))
        latest = manager.latest()
        assert latest is not None

        def bare_load(i: int, path: Path = bare_path) -> None:
            torch.load(path, weights_only=True, map_location="cpu")

        def ours_load(
            i: int, manager: CheckpointManager = manager, path: Path = latest.path
        ) -> None:
            manager.load(path)

        load_bare, load_ours = compare(bare_load, ours_load, repeats=repeats)
        mb = f"{size / 1e6:.1f} MB" if size > 1e6 else f"{size / 1e3:.0f} KB"
        rows.append((f"save, {label} ({mb})", save_bare, save_fsync, save_ours))
        rows.append((f"load, {label} ({mb})", load_bare, None, load_ours))
    return rows


def bench_scan(root: Path, repeats: int, episodes: int = 5000) -> list[tuple[str, float, float]]:
    models = Path(tempfile.mkdtemp(prefix="scan-", dir=root)) / "run" / "models"
    manager = CheckpointManager(models, max_keep=episodes)
    gen = torch.Generator().manual_seed(1)
    policy, _ = dqn_state(gen)
    for episode in range(1, episodes - 2):  # stubs with valid-looking names, never opened
        (models / f"model_ep{episode}.pt").touch()
        (models / f"model_ep{episode}.json").touch()
    for episode in range(episodes - 2, episodes + 1):
        manager.save(episode, policy, {"metrics": {"total_profit": 1.0}})
    files = sum(1 for _ in os.scandir(models))

    def bare_scan(i: int) -> None:
        with os.scandir(models) as it:
            for _ in it:
                pass

    def ours_latest(i: int) -> None:
        info = CheckpointManager(models, max_keep=episodes).latest()
        assert info is not None and info.episode == episodes

    def ours_episodes(i: int) -> None:
        assert len(manager.all_episodes()) == episodes

    scan_bare, latest_ms, episodes_ms = compare(
        bare_scan, ours_latest, ours_episodes, repeats=repeats
    )
    assert sum(1 for _ in os.scandir(models)) == files  # nothing set aside or removed
    return [
        (f"latest() over {files:,} files", scan_bare, latest_ms),
        (f"all_episodes() over {files:,} files", scan_bare, episodes_ms),
    ]


def observations(n: int, obs_dim: int, gen: torch.Generator, windowed: bool) -> torch.Tensor:
    """``n`` consecutive observations: random floats (incompressible, the worst case), or as the
    trading env makes them (a window of the last ``obs_dim - 1`` returns and the position)."""
    if not windowed:
        return torch.randn(n, obs_dim, generator=gen)
    returns = torch.randn(n + obs_dim, generator=gen) * 0.01
    obs = torch.empty(n, obs_dim)
    obs[:, :-1] = returns.unfold(0, obs_dim - 1, 1)[:n]
    obs[:, -1] = torch.randint(0, 2, (n,), generator=gen).float()
    return obs


def fill_buffer(buffer: ReplayBuffer, gen: torch.Generator, windowed: bool) -> None:
    """Fill every row at once, as ``capacity`` calls of ``add`` would (stamps included)."""
    obs = observations(buffer.capacity + 1, buffer.obs_dim, gen, windowed)
    buffer.observations[0] = obs[:-1]
    buffer.observations[1] = obs[1:]
    buffer.actions.random_(0, 3, generator=gen)
    buffer.rewards.normal_(generator=gen)
    buffer.dones.bernoulli_(0.004, generator=gen)
    buffer.fill = buffer.added = buffer.capacity
    buffer.pos = 0
    buffer._stamps = [buffer.capacity] * len(buffer._stamps)


def add_rows(buffer: ReplayBuffer, n: int, gen: torch.Generator, windowed: bool) -> None:
    """``n`` real ``add`` calls with random transitions."""
    obs = observations(n + 1, buffer.obs_dim, gen, windowed).numpy()
    actions = torch.randint(0, 3, (n,), generator=gen).tolist()
    rewards = torch.randn(n, generator=gen).tolist()
    for i in range(n):
        buffer.add(obs[i], actions[i], rewards[i], obs[i + 1], i % 250 == 249)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_big_buffer(
    root: Path, rows: int, changed: int, repeats: int, windowed: bool
) -> list[str]:
    """The issue-14 figures: a big buffer, a few thousand rows changed between saves."""
    gen = torch.Generator().manual_seed(2)
    policy, training = dqn_state(gen)
    buffer = ReplayBuffer(rows, 31)
    fill_buffer(buffer, gen, windowed)
    one_buffer = sum(
        t.nbytes for t in (buffer.observations, buffer.actions, buffer.rewards, buffer.dones)
    )
    work = Path(tempfile.mkdtemp(prefix="buffer-", dir=root))
    chunked = CheckpointManager(work / "chunked" / "models", max_keep=5)
    whole = CheckpointManager(work / "whole" / "models", max_keep=5)
    bare_path = work / "bare.pt"

    def plain() -> dict[str, Any]:
        state = buffer.state_dict()
        return {k: v.tensor if hasattr(v, "tensor") else v for k, v in state.items()}

    def meta(episode: int) -> dict[str, Any]:
        # A better profit every save: best_model.* is the newest checkpoint, as while learning.
        return {"metrics": {"total_profit": float(episode)}, "epsilon": 0.05}

    first = time.perf_counter()
    chunked.save(0, policy, meta(0), training_state={**training, "buffer": buffer.state_dict()})
    first_ms = (time.perf_counter() - first) * 1000

    def save_bare(episode: int) -> None:
        torch.save({**training, "buffer": plain()}, bare_path)

    def save_whole(episode: int) -> None:
        state = {**training, "buffer": plain()}
        whole.save(episode, policy, meta(episode), training_state=state)

    def save_chunked(episode: int) -> None:
        state = {**training, "buffer": buffer.state_dict()}
        chunked.save(episode, policy, meta(episode), training_state=state)

    sides = {"bare": save_bare, "whole": save_whole, "chunked": save_chunked}
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(1, repeats + 1):
        add_rows(buffer, changed, gen, windowed)
        for k in range(len(order)):
            name = order[(i + k) % len(order)]
            start = time.perf_counter()
            sides[name](i)
            times[name].append(time.perf_counter() - start)
    save_ms = {name: median_ms(t) for name, t in times.items()}
    chunked_dir = directory_bytes(chunked.models_dir)
    whole_dir = directory_bytes(whole.models_dir)

    def bare_load(i: int) -> None:
        torch.load(bare_path, weights_only=True, map_location="cpu")

    def resume(manager: CheckpointManager) -> Callable[[int], None]:
        def load(i: int) -> None:
            fresh = CheckpointManager(manager.models_dir, max_keep=5)
            info = fresh.latest(resumable=True)
            assert info is not None and info.episode == repeats
            fresh.load(info)

        return load

    load_bare, load_whole, load_chunked = compare(
        bare_load, resume(whole), resume(chunked), repeats=max(3, repeats // 3)
    )
    mb = one_buffer / 1e6
    shutil.rmtree(work)
    return [
        f"replay buffer of {'windowed' if windowed else 'random'} observations: {rows:,} rows"
        f" ({mb:.0f} MB), {changed:,} rows added between saves,"
        f" max_keep=5 (first chunked save: {first_ms:.0f} ms)",
        f"{'':<28} {'bare':>9} {'whole':>9} {'chunked':>9} {'chunked/bare':>12}",
        f"{'save (median)':<28} {save_ms['bare']:>7.0f}ms {save_ms['whole']:>7.0f}ms"
        f" {save_ms['chunked']:>7.0f}ms {save_ms['chunked'] / save_ms['bare']:>11.2f}x",
        f"{'resume: latest() + load()':<28} {load_bare:>7.0f}ms {load_whole:>7.0f}ms"
        f" {load_chunked:>7.0f}ms {load_chunked / load_bare:>11.2f}x",
        f"{'run directory / one buffer':<28} {'':>9} {whole_dir / one_buffer:>8.2f}x"
        f" {chunked_dir / one_buffer:>8.2f}x   ({chunked_dir / 1e6:.0f} MB vs"
        f" {whole_dir / 1e6:.0f} MB whole)",
    ]


def bench_default_run(root: Path) -> str:
    """The default 300-episode run's models/ size, from a real training run."""
    run_dir = root / "default-run"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "finsense.train", f"hydra.run.dir={run_dir}", "progress=log"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    models = directory_bytes(run_dir / "models")
    return (
        f"default run (300 episodes, {seconds:.0f} s): models/ {models / 1e6:.1f} MB,"
        f" run directory {directory_bytes(run_dir) / 1e6:.1f} MB"
    )


def _moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free port of 127.0.0.1, as a subprocess (its own GIL)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.2)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _train_for(seconds: float) -> Callable[[], None]:
    """Training-like CPU work of about ``seconds`` (small-network matmuls, one torch thread,
    the GIL held between ops as in the trainer's loop)."""
    w = torch.randn(64, 64)
    x = torch.randn(32, 64)

    def step(n: int) -> None:
        y = x
        for _ in range(n):
            y = torch.tanh(y @ w)

    start = time.perf_counter()
    step(2000)
    per_step = (time.perf_counter() - start) / 2000
    steps = max(1, int(seconds / per_step))
    return lambda: step(steps)


def bench_remote_upload(root: Path, rows: int, changed: int, gap: float, repeats: int) -> list[str]:
    """checkpoints.remote against a local S3 server: what the mirror adds to a save cycle."""
    from finsense.checkpoint.mirrored import MirroredCheckpointManager
    from finsense.checkpoint.remote import open_remote

    server, endpoint = _moto_server()
    saved_env = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="finsense-bench")
        gen = torch.Generator().manual_seed(3)
        policy, training = dqn_state(gen)
        buffer = ReplayBuffer(rows, 31)
        fill_buffer(buffer, gen)
        work = Path(tempfile.mkdtemp(prefix="remote-", dir=root))
        plain = CheckpointManager(work / "plain" / "models", max_keep=5)
        remote = open_remote("s3://finsense-bench/bench", "mirrored")
        mirrored = MirroredCheckpointManager(work / "mirrored" / "models", remote, max_keep=5)
        train = _train_for(gap)

        def meta(episode: int) -> dict[str, Any]:
            return {"metrics": {"total_profit": float(episode)}, "epsilon": 0.05}

        def state() -> dict[str, Any]:
            return {**training, "buffer": buffer.state_dict()}

        plain.save(0, policy, meta(0), training_state=state())
        mirrored.save(0, policy, meta(0), training_state=state())
        mirrored.mirror.wait()
        first_upload = mirrored.mirror.last_seconds
        server_cpu_before = _cpu_seconds(server.pid)
        times: dict[str, dict[str, list[float]]] = {
            side: {"save": [], "train": [], "cycle": [], "upload": [], "cpu": [], "waited": []}
            for side in ("plain", "mirrored")
        }
        managers: dict[str, CheckpointManager] = {"plain": plain, "mirrored": mirrored}
        for i in range(1, repeats + 1):
            add_rows(buffer, changed, gen)
            for side in ("plain", "mirrored") if i % 2 else ("mirrored", "plain"):
                manager = managers[side]
                cpu = time.process_time()
                start = time.perf_counter()
                manager.save(i, policy, meta(i), training_state=state())
                saved = time.perf_counter()
                train()
                end = time.perf_counter()
                row = times[side]
                if side == "mirrored":
                    # The next save would wait for an upload still running now (the stall);
                    # waiting here also keeps the upload out of the plain side's cycle.
                    mirrored.mirror.wait()
                    row["waited"].append(time.perf_counter() - end)
                row["cpu"].append(time.process_time() - cpu)
                row["save"].append(saved - start)
                row["train"].append(end - saved)
                row["cycle"].append(end - start)
            mirrored.mirror.wait()
            times["mirrored"]["upload"].append(mirrored.mirror.last_seconds)
        mirrored.close()
        assert mirrored.mirror.ok and mirrored.mirror.failures == 0
        server_cpu = _cpu_seconds(server.pid) - server_cpu_before
    finally:
        server.kill()
        server.wait()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ms = {
        side: {k: median_ms(v) if v else 0.0 for k, v in row.items()} for side, row in times.items()
    }
    p, m = ms["plain"], ms["mirrored"]
    extra = m["cycle"] + m["waited"] - p["cycle"]
    return [
        f"checkpoints.remote on a local S3 server (moto): {rows:,}-row buffer"
        f" ({rows * 31 * 4 * 2 / 1e6:.0f} MB of observations), {changed:,} rows added and"
        f" {gap:.2f} s of training between saves (first, full upload: {first_upload:.2f} s)",
        f"{'':<34} {'local only':>10} {'mirrored':>10}",
        f"{'save call (median)':<34} {p['save']:>8.0f}ms {m['save']:>8.0f}ms",
        f"{'next save waits for the upload':<34} {'':>10} {m['waited']:>8.0f}ms",
        f"{'upload in the background':<34} {'':>10} {m['upload']:>8.0f}ms",
        f"{'CPU of the trainer process/cycle':<34} {p['cpu']:>8.0f}ms {m['cpu']:>8.0f}ms",
        f"{'  CPU of the S3 server (same host)':<34} {'':>10}"
        f" {server_cpu / repeats * 1000:>8.0f}ms",
        f"{'training between saves':<34} {p['train']:>8.0f}ms {m['train']:>8.0f}ms",
        f"{'save + training (one cycle)':<34} {p['cycle']:>8.0f}ms {m['cycle']:>8.0f}ms",
        f"{'cycle cost of the mirror (+ wait)':<34} {'':>10} {extra:>8.0f}ms"
        f"  ({extra / p['save']:.2f}x the local save; target <= 1x)",
    ]


def main() -> None:
    """Run the benchmarks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per side (median)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--buffer-rows", type=int, default=1_000_000, help="big buffer rows")
    parser.add_argument("--changed", type=int, default=2_500, help="rows added between saves")
    parser.add_argument(
        "--default-run", action="store_true", help="also train the default run and size it"
    )
    parser.add_argument(
        "--remote-s3",
        action="store_true",
        help="also measure checkpoints.remote uploads to a local S3 server (moto)",
    )
    parser.add_argument("--remote-rows", type=int, default=250_000, help="buffer rows (remote)")
    parser.add_argument(
        "--remote-gap", type=float, default=0.5, help="seconds of training between saves (remote)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="finsense-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        rows = bench_save_load(root, args.repeats)
        scan = bench_scan(root, args.repeats)
        big = [
            line
            for windowed in (False, True)
            for line in bench_big_buffer(
                root, args.buffer_rows, args.changed, args.repeats, windowed
            )
        ]
        default = bench_default_run(root) if args.default_run else None
        remote = (
            bench_remote_upload(root, args.remote_rows, args.changed, args.remote_gap, args.repeats)
            if args.remote_s3
            else None
        )
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    columns = {"bare": 9, "bare+fsync": 11, "FinSense": 9, "ratio": 6, "vs+fsync": 8}
    print(f"{'operation':<34} " + " ".join(f"{c:>{w}}" for c, w in columns.items()))
    for label, bare, durable, ours in rows:
        with_fsync = f"{durable:>9.2f}ms" if durable is not None else f"{'':>11}"
        versus = f"{ours / durable:>7.2f}x" if durable is not None else f"{'':>8}"
        print(
            f"{label:<34} {bare:>7.2f}ms {with_fsync} {ours:>7.2f}ms {ours / bare:>5.2f}x {versus}"
        )
    print(f"{'operation':<34} {'os.scandir':>11} {'FinSense':>9}")
    for label, bare, ours in scan:
        print(f"{label:<34} {bare:>9.2f}ms {ours:>7.2f}ms")
    print("bare: torch.save/torch.load(weights_only=True) of the same dict, one file, no fsync.")
    print("FinSense save: temp files, fsync of files and directory, SHA-256, JSON, best-model")
    print("links, rotation (max_keep=5); load: SHA-256 verification + weights_only load.")
    print()
    print("\n".join(big))
    print("whole: the buffer written into the companion file (the layout before chunks);")
    print("chunked: the replay buffer's own state_dict (stamped chunks), as the trainer saves.")
    if default is not None:
        print(default)
    if remote is not None:
        print()
        print("\n".join(remote))


if __name__ == "__main__":
    main()
