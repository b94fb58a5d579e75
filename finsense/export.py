"""``python -m finsense.export RUN_DIR [checkpoint=best|latest|PATH] [out=DIR]``.

Takes a trained policy out of FinSense, so it can be deployed or shared where FinSense is not
installed. Writes, by default into ``RUN_DIR/export/<checkpoint stem>/`` (``best_model``,
``model_ep290``, ...):

- ``policy.safetensors``: the Q-network's weights under their FinSense parameter names
  (``hidden.0.weight``, ..., ``head.bias``), float32, in the ``safetensors`` format (plain
  tensors, no code; readable from Python, Rust, JavaScript, ...).
- ``policy.pt2``: a ``torch.export`` program of the Q function, observations ``float32 [N,
  obs_dim]`` to Q-values ``float32 [N, n_actions]`` for any ``N >= 1``; ``torch.export.load``
  runs it with plain PyTorch.
- ``policy.json``: everything needed to use the weights correctly: the network and its exact
  forward computation, the observation layout and its scale, what each action means, when the
  env fills a trade, the checkpoint (episode, metrics, SHA-256), the run's env config, and the
  SHA-256 of the two files above. It is written last: a directory with ``policy.json`` is a
  complete export.

The checkpoint is read with the checkpoint store (``torch.load(weights_only=True)``, checked
against its recorded SHA-256), like ``finsense.evaluate``. A user's mistake (no such run, no
checkpoint, data that cannot be read) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import finsense
from finsense.agents import QNetwork
from finsense.checkpoint import (
    write_bytes_atomic,
    write_json_atomic,
)
from finsense.cli import quiet_on_closed_stdout
from finsense.data.market import split_bounds
from finsense.envs.trading import FEATURE_CLIP, TradingEnv
from finsense.errors import CheckpointError, FinSenseError
from finsense.evaluation import (
    is_trading_run,
    load_policy_network,
    load_run_config,
    run_env_kwargs,
    select_checkpoint,
)
from finsense.runs import relative_to_run

log = logging.getLogger(__name__)

PROG = "finsense.export"
#: ``KEY=VALUE`` arguments the command accepts, with their defaults (``out``: see module doc).
OPTIONS: dict[str, str | None] = {"checkpoint": "best", "out": None}
#: Where exports go, relative to the run directory (one subdirectory per checkpoint stem).
EXPORT_DIR = "export"
WEIGHTS_FILE = "policy.safetensors"
PROGRAM_FILE = "policy.pt2"
SPEC_FILE = "policy.json"
#: Version of the layout of ``policy.json``; raised when a key changes meaning.
SPEC_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policy` wrote.

    Attributes:
        out_dir: the directory holding the three files.
        checkpoint: the checkpoint file exported.
        episode: its training episode (None when unknown: a file without metadata).
        spec: the content of ``policy.json``.
    """

    out_dir: Path
    checkpoint: Path
    episode: int | None
    spec: dict[str, Any]

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """``policy.safetensors``, ``policy.pt2`` and ``policy.json`` in :attr:`out_dir`."""
        return (
            self.out_dir / WEIGHTS_FILE,
            self.out_dir / PROGRAM_FILE,
            self.out_dir / SPEC_FILE,
        )


# -- choosing and loading the checkpoint ------------------------------------------------------
def _checkpoint_sha256(path: Path, metadata: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The model file's SHA-256 and whether the store verified it.

    A store checkpoint's hash is the one its JSON recorded and :meth:`CheckpointManager.load`
    checked the loaded bytes against. A bare ``.pt`` (no JSON beside it) was loaded unverified;
    its hash is computed here so the export still names the file it came from.
    """
    sums = metadata.get("sha256")
    if isinstance(sums, Mapping) and isinstance(sums.get("model"), str):
        return str(sums["model"]), True
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest(), False
    except OSError:
        return None, False


# -- the spec ---------------------------------------------------------------------------------
def _layers(network: QNetwork) -> list[dict[str, Any]]:
    """Each ``Linear`` layer, input to output, by its parameter names."""
    layers = []
    names = [f"hidden.{i}" for i in range(len(network.hidden))] + ["head"]
    modules = [*network.hidden, network.head]
    for name, module in zip(names, modules, strict=True):
        layers.append(
            {
                "weight": f"{name}.weight",
                "bias": f"{name}.bias",
                "in_features": int(module.in_features),
                "out_features": int(module.out_features),
                "activation": "relu" if name != "head" else None,
            }
        )
    return layers


def _forward_steps(network: QNetwork) -> list[str]:
    """The forward computation, one line per operation, in the parameters' names."""
    steps = ["h = obs  # float32 [N, obs_dim]"]
    for i in range(len(network.hidden)):
        steps.append(f"h = relu(h @ hidden.{i}.weight.T + hidden.{i}.bias)")
    if network.dueling:
        steps += [
            "out = h @ head.weight.T + head.bias  # [N, n_actions + 1]",
            "A = out[:, :n_actions]; V = out[:, n_actions:]  # advantages, state value [N, 1]",
            "q = A - A.mean(dim=1, keepdim=True) + V  # [N, n_actions]",
        ]
    else:
        steps.append("q = h @ head.weight.T + head.bias  # [N, n_actions]")
    steps.append("action = q.argmax(dim=1)  # the greedy action; ties go to the lowest index")
    return steps


def _network_spec(network: QNetwork) -> dict[str, Any]:
    arch = network.arch
    kind = "dueling " if network.dueling else ""
    text = (
        f"An MLP with {len(network.hidden_sizes)} hidden layer(s) of {list(network.hidden_sizes)} "
        "units: each hidden layer is y = relu(x @ W.T + b) (torch.nn.functional.linear then "
        f"ReLU), and a linear {kind}head."
    )
    if network.dueling:
        text += (
            " The head has n_actions + 1 outputs: the advantages A (the first n_actions) and the "
            "state value V (the last); the Q-values are Q = A - mean(A) + V."
        )
    else:
        text += " The head's n_actions outputs are the Q-values."
    return {
        **arch,
        "activation": "relu",
        "dtype": "float32",
        "input": "obs, float32 [N, obs_dim]",
        "output": "Q-values, float32 [N, n_actions]",
        "parameters": {k: list(v.shape) for k, v in network.state_dict().items()},
        "layers": _layers(network),
        "forward": _forward_steps(network),
        "forward_text": text,
        "greedy_action": "argmax of the Q-values over the actions (torch.argmax: the first "
        "maximal index on ties); FinSense evaluates one observation at a time this way",
    }


def _actions(env: TradingEnv) -> dict[str, dict[str, Any]]:
    positions = (-1, 0, 1) if env.allow_short else (0, 1)
    names = {-1: "short", 0: "flat", 1: "long"}
    return {
        str(index): {"position": position, "name": names[position]}
        for index, position in enumerate(positions)
    }


def _observation_spec(env: TradingEnv) -> dict[str, Any]:
    w = env.window_size
    return {
        "shape": [w + 1],
        "dtype": "float32",
        "window_size": w,
        "inputs": [
            {
                "indices": [0, w - 1],
                "name": "scaled_log_returns",
                "description": (
                    f"the last {w} daily log returns of the close, oldest first: index {w - 1} is "
                    "r_t = ln(close_t / close_{t-1}) into the current close t, index 0 is "
                    f"r_(t-{w - 1}); each divided by feature_scale and clipped to "
                    f"[-{FEATURE_CLIP:g}, {FEATURE_CLIP:g}]"
                ),
            },
            {
                "indices": [w, w],
                "name": "position",
                "description": (
                    "the position held now, going into this decision: the position of the "
                    "previous action (-1 short, 0 flat, 1 long; 0 at the start of an episode)"
                ),
            },
        ],
        "returns": {
            "formula": "x = clip(ln(close_t / close_{t-1}) / feature_scale, -clip, clip)",
            "feature_scale": env.feature_scale,
            "feature_scale_is": (
                "the standard deviation (ddof=0) of the daily log returns between consecutive "
                "rows of the training split (1.0 if that is zero or undefined): one constant "
                "per dataset, the same for training, testing and deployment"
            ),
            "clip": FEATURE_CLIP,
            "computed_in": "float64, then cast to float32",
        },
    }


#: ``execution.fill`` and ``execution.plainly`` of policy.json, by ``env.execution``.
_FILLS: dict[str, tuple[str, str]] = {
    "next_close": (
        "at the next close: the order chosen on the observation whose last return ends at "
        "close_t fills at close_(t+1)",
        "The backtest waited one close: a live order placed after close_t fills at the next "
        "close at the earliest (a market-on-close order the next day), as the env assumed.",
    ),
    "next_open": (
        "at the next open: the order chosen on the observation whose last return ends at close_t "
        "fills at open_(t+1)",
        "The backtest filled at the next day's open, the earliest a live order placed after "
        "close_t can fill (a market-on-open order).",
    ),
    "close": (
        "at the current close: the very close whose return is the last return input "
        "(index window_size - 1) of the observation the action was chosen on",
        "This policy was trained and scored filling at the close the signal saw, with no "
        "delay. Live, a close is known only once it is printed, so the earliest real fill is "
        "later (the next open or close); expect worse results than the backtest's where prices "
        "move between the signal and the fill.",
    ),
}


def _execution_spec(env: TradingEnv) -> dict[str, Any]:
    fill, plainly = _FILLS[env.execution]
    return {
        "model": env.execution,
        "fill": fill,
        "plainly": plainly,
        "holding": "the position is held until the next fill; holding does not rebalance (the "
        "units stay fixed while the price moves)",
        "trade": (
            "only when the position changes: the old position is closed, then the new one "
            "opened with all equity E (notional E / (1 + cost)); each leg pays cost = fee + "
            "slippage_bps / 10000 times its notional; a short pays borrow_rate / 252 of its "
            "notional per day held"
        ),
        "fee": env.fee,
        "slippage_bps": env.slippage_bps,
        "borrow_rate": env.borrow_rate,
        "reward": env.reward_name,
        "allow_short": env.allow_short,
    }


def _data_spec(env: TradingEnv) -> dict[str, Any]:
    market = env.data
    # The env was built over every row (split "all"): the split boundaries are recomputed with
    # the env's own rule.
    first_val, first_test = split_bounds(len(market), env.val_fraction, env.test_fraction)

    def date_of(row: int, stop: int) -> str | None:
        return str(market.dates[row].astype("datetime64[D]")) if row < stop else None

    return {
        "source": market.source,
        "rows": len(market),
        "first_date": str(market.dates[0].astype("datetime64[D]")),
        "last_date": str(market.dates[-1].astype("datetime64[D]")),
        "train_rows": first_val,
        "first_val_date": date_of(first_val, first_test),
        "first_test_date": date_of(first_test, len(market)),
        "val_fraction": env.val_fraction,
        "test_fraction": env.test_fraction,
    }


def policy_spec(
    network: QNetwork,
    env: TradingEnv,
    *,
    env_config: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    files: Mapping[str, str],
) -> dict[str, Any]:
    """The content of ``policy.json`` (see the module docstring).

    Args:
        network: the policy network.
        env: an env built from the run's env config (its observation scale and actions are
            read from it, so the spec says what the env does, not what it was meant to do).
        env_config: the run's recorded ``env`` section.
        checkpoint: ``path``, ``episode``, ``metrics``, ``sha256``, ... of the checkpoint.
        files: file name -> SHA-256 of the exported files.
    """
    return {
        "format": "finsense-policy",
        "format_version": SPEC_FORMAT_VERSION,
        "finsense_version": finsense.__version__,
        "torch_version": torch.__version__,
        "files": {
            "weights": WEIGHTS_FILE,
            "program": PROGRAM_FILE,
            "sha256": dict(files),
        },
        "network": _network_spec(network),
        "observation": _observation_spec(env),
        "actions": _actions(env),
        "execution": _execution_spec(env),
        "data": _data_spec(env),
        "checkpoint": dict(checkpoint),
        "env": dict(env_config),
        "loading": {
            "safetensors": "safetensors.torch.load_file('policy.safetensors') gives the "
            "parameters by name; apply network.forward",
            "torch_export": "torch.export.load('policy.pt2').module()(obs) gives the Q-values",
        },
    }


# -- the files --------------------------------------------------------------------------------
def _weights_bytes(network: QNetwork, metadata: Mapping[str, str]) -> bytes:
    try:
        from safetensors.torch import save
    except ImportError:
        raise FinSenseError(
            "exporting needs the safetensors package: pip install 'finsense[export]' "
            "(or pip install safetensors)"
        ) from None
    # contiguous() clones: safetensors refuses views sharing storage; all are fresh here anyway.
    tensors = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    return bytes(save(tensors, metadata=dict(metadata)))


def _program_bytes(network: QNetwork) -> bytes:
    """``torch.export`` of the Q function with a dynamic batch dimension, serialised."""
    # An example batch of 2: torch.export specialises sizes 0 and 1, so a batch of one would
    # pin N to 1; the dimension is then declared dynamic from 1 upwards.
    example = torch.zeros(2, network.obs_dim, dtype=torch.float32)
    # A policy is only run, never trained further: parameters saved without requires_grad give
    # the loaded program plain outputs (no autograd graph) for its users.
    network.requires_grad_(False)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes={"obs": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def export_policy(
    run_dir: str | Path, checkpoint: str | Path = "best", out: str | Path | None = None
) -> ExportResult:
    """Export a run's checkpoint: write ``policy.safetensors``, ``policy.pt2`` and
    ``policy.json`` (see the module docstring) and return what was written.

    Args:
        run_dir: a run directory (with ``.hydra/config.yaml`` and ``models/``).
        checkpoint: ``best`` (falls back to the latest when the run keeps no best model),
            ``latest``, or a path to a ``.pt`` file (absolute, relative to the current directory,
            to ``run_dir`` or to ``run_dir/models``).
        out: the output directory; default ``run_dir/export/<checkpoint stem>``.

    Raises:
        FinSenseError: the run directory, its config, its data or its checkpoint is missing or
            damaged (CheckpointError for checkpoints), or the output cannot be written.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if not is_trading_run(config):
        raise FinSenseError(
            f"{run_dir}: export writes a trading policy's spec (observation features, action "
            "positions) and this run's env is not a trading env; load its weights with "
            "finsense.evaluation.load_policy_network instead"
        )
    manager, selected = select_checkpoint(run_dir, config, checkpoint, doing="exporting")
    policy = load_policy_network(manager, selected)
    network, metadata, path = policy.network, policy.metadata, policy.path
    if type(network) is not QNetwork:
        raise FinSenseError(
            f"{path}: its network is a {type(network).__name__} (agent.network); export "
            "describes the built-in MLP (agent/network=mlp) layer by layer and knows no other "
            "network yet: load the weights with finsense.evaluation.load_policy_network instead"
        )

    # The env gives the observation scale (the policy's own when its checkpoint holds it, else
    # the run's data's) and the action meanings; split "all" needs no test rows, so a run
    # trained without a test split exports too.
    env_kwargs = {**run_env_kwargs(run_dir, config), **(policy.observation or {}), "split": "all"}
    env = TradingEnv(**env_kwargs)
    obs_dim = int(env.observation_space.shape[0])
    n_actions = int(env.action_space.n)
    if (network.obs_dim, network.n_actions) != (obs_dim, n_actions):
        raise CheckpointError(
            f"{path}: its network takes {network.obs_dim} inputs and has {network.n_actions} "
            f"actions, but the run's env gives {obs_dim} and {n_actions}; pass a checkpoint of "
            "this run"
        )

    stem = path.name.removesuffix(".pt")
    out_dir = Path(out) if out is not None else run_dir / EXPORT_DIR / stem
    episode = metadata.get("episode")
    episode = episode if isinstance(episode, int) and not isinstance(episode, bool) else None
    sha256, verified = _checkpoint_sha256(path, metadata)
    checkpoint_info = {
        "path": relative_to_run(path, run_dir),
        "episode": episode,
        "metrics": metadata.get("metrics"),
        "metric_name": metadata.get("metric_name"),
        "metric_value": metadata.get("metric_value"),
        "is_best": metadata.get("is_best"),
        "sha256": sha256,
        "sha256_verified": verified,
        "written_at": metadata.get("written_at"),
    }

    weights = _weights_bytes(
        network,
        {
            "format": "finsense-policy",
            "finsense_version": finsense.__version__,
            "arch": json.dumps(network.arch, sort_keys=True),
            "spec": SPEC_FILE,
        },
    )
    program = _program_bytes(network)
    files = {
        WEIGHTS_FILE: hashlib.sha256(weights).hexdigest(),
        PROGRAM_FILE: hashlib.sha256(program).hexdigest(),
    }
    spec = policy_spec(
        network, env, env_config=config["env"], checkpoint=checkpoint_info, files=files
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / WEIGHTS_FILE, weights)
        write_bytes_atomic(out_dir / PROGRAM_FILE, program)
        # Last: its hashes name the two files above, so it marks a complete export.
        write_json_atomic(out_dir / SPEC_FILE, spec)
    except OSError as exc:
        raise FinSenseError(
            f"{exc.filename or out_dir}: cannot write the export ({exc.strerror or exc}); "
            "pass out=DIR with a writable directory"
        ) from None
    return ExportResult(out_dir, path, episode, spec)


# -- command line -----------------------------------------------------------------------------
def _parse_options(pairs: list[str]) -> dict[str, str | None]:
    options = dict(OPTIONS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in OPTIONS or not value:
            known = ", ".join(f"{k}=..." for k in OPTIONS)
            raise FinSenseError(f"unknown argument {pair!r}; expected {known}")
        options[key] = value
    return options


@quiet_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0, or 2 for a user's mistake)."""
    parser = argparse.ArgumentParser(
        prog="python -m finsense.export",
        description="Export a run's policy for use without FinSense: policy.safetensors "
        "(weights), policy.pt2 (torch.export program of the Q function) and policy.json "
        "(network, observation layout and scale, actions, execution model, checkpoint).",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run directory")
    parser.add_argument(
        "options",
        nargs="*",
        metavar="KEY=VALUE",
        help="checkpoint=best|latest|PATH (default best); out=DIR (default "
        "RUN_DIR/export/<checkpoint stem>)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        options = _parse_options(args.options)
        result = export_policy(args.run_dir, options["checkpoint"] or "best", options["out"])
    except FinSenseError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    episode = "" if result.episode is None else f" (episode {result.episode})"
    print(f"Exported {result.checkpoint}{episode} to {result.out_dir}:")
    for path in result.files:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
