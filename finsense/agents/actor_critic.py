"""PPO's default network: an MLP with a policy head and a value head, and its fast passes.

Besides ``forward`` (action logits) and ``value``, an :class:`ActorCriticMLP` prepared by
:meth:`ActorCriticMLP.flatten_` runs a forward pass that keeps each layer's output
(:meth:`~ActorCriticMLP.forward_cached`) and writes the parameter gradients of given
``dL/dlogits`` and ``dL/dvalue`` by hand (:meth:`~ActorCriticMLP.backward_cached`), as the DQN's
:class:`~finsense.agents.networks.QNetwork` does: for a network this small autograd's bookkeeping
costs more than the arithmetic. :meth:`~ActorCriticMLP.acting_weights` gives both heads as a
few numpy matrices, for acting on one observation at a time without torch's per-call overhead.
``tests/test_ppo.py`` checks both against autograd and ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from finsense.agents.networks import check_hidden_sizes, flatten_parameters
from finsense.errors import ConfigError

# tanh's gradient given its output y: grad * (1 - y^2), autograd's own op.
_tanh_backward = torch.ops.aten.tanh_backward

#: One layer once flattened: (weight, weight.t(), bias, weight.grad, bias.grad).
_Layer = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class ActorCriticMLP(nn.Module):
    """Action logits and state values from one module: ``(batch, obs_dim)`` float32 ->
    ``forward``: ``(batch, n_actions)`` logits, ``value``: ``(batch,)``.

    Hidden layers are ``Linear`` + tanh of ``hidden_sizes`` units, shared by both heads
    (``shared=True``) or one stack per head (``shared=False``: Stable-Baselines3's default
    ``MlpPolicy``, ``net_arch=dict(pi=[64, 64], vf=[64, 64])``). Weights start as SB3's:
    orthogonal, gain sqrt(2) for hidden layers, 0.01 for the policy head, 1 for the value head,
    biases zero. The greedy action is ``forward(obs).argmax(-1)``, as for a Q-network, so
    evaluation treats it like any policy network.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        shared: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(shared, bool | np.bool_):
            raise ConfigError(f"agent.network.shared must be true or false, got {shared!r}")
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.hidden_sizes = check_hidden_sizes(hidden_sizes)
        self.shared = bool(shared)
        self.pi_trunk = self._trunk()
        self.vf_trunk = None if self.shared else self._trunk()
        self.pi_head = nn.Linear(self.hidden_sizes[-1], self.n_actions)
        self.vf_head = nn.Linear(self.hidden_sizes[-1], 1)
        for trunk in (self.pi_trunk, self.vf_trunk):
            for layer in trunk or ():
                if isinstance(layer, nn.Linear):
                    _orthogonal(layer, math.sqrt(2.0))
        _orthogonal(self.pi_head, 0.01)
        _orthogonal(self.vf_head, 1.0)
        # Once flatten_() fixed the parameter tensors, per layer, input to output.
        self._pi: list[_Layer] = []
        self._vf: list[_Layer] = []

    def _trunk(self) -> nn.Sequential:
        sizes = (self.obs_dim, *self.hidden_sizes)
        layers: list[nn.Module] = []
        for i, o in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(i, o), nn.Tanh()]
        return nn.Sequential(*layers)

    @property
    def arch(self) -> dict[str, Any]:
        """The network's shape as plain values (saved next to its weights)."""
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "hidden_sizes": list(self.hidden_sizes),
            "shared": self.shared,
        }

    def forward(self, obs: Tensor) -> Tensor:
        """Action logits: ``(batch, obs_dim) -> (batch, n_actions)`` (or unbatched)."""
        return self.pi_head(self.pi_trunk(obs))

    def value(self, obs: Tensor) -> Tensor:
        """State values: ``(batch, obs_dim) -> (batch,)``."""
        trunk = self.pi_trunk if self.vf_trunk is None else self.vf_trunk
        return self.vf_head(trunk(obs)).squeeze(-1)

    def logits_and_value(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads, the shared trunk run once."""
        h = self.pi_trunk(obs)
        logits = self.pi_head(h)
        if self.vf_trunk is not None:
            h = self.vf_trunk(obs)
        return logits, self.vf_head(h).squeeze(-1)

    # -- training without autograd ------------------------------------------------------------
    def flatten_(self) -> tuple[Tensor, Tensor]:
        """:func:`~finsense.agents.networks.flatten_parameters` of this network, then keep its
        per-layer tensors for :meth:`forward_cached` and :meth:`backward_cached`."""
        flat, grads = flatten_parameters(self)

        def layers(*modules: nn.Module | None) -> list[_Layer]:
            out: list[_Layer] = []
            for module in modules:
                for layer in module.modules() if module is not None else ():
                    if isinstance(layer, nn.Linear):
                        w, b = layer.weight, layer.bias
                        assert w.grad is not None and b.grad is not None
                        out.append((w, w.t(), b, w.grad, b.grad))
            return out

        self._pi = layers(self.pi_trunk, self.pi_head)
        self._vf = layers(self.vf_trunk, self.vf_head)
        return flat, grads

    def forward_cached(self, obs: Tensor) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        """Logits ``(batch, n_actions)``, values ``(batch,)`` and the cache of
        :meth:`backward_cached` (each stack's input and hidden outputs). Requires
        :meth:`flatten_`; records no autograd graph."""
        pi = [obs]
        for _, w_t, b, _, _ in self._pi[:-1]:
            pi.append(torch.addmm(b, pi[-1], w_t).tanh_())
        _, w_t, b, _, _ = self._pi[-1]
        logits = torch.addmm(b, pi[-1], w_t)
        vf = pi if self.shared else [obs]
        for _, w_t, b, _, _ in self._vf[:-1]:
            vf.append(torch.addmm(b, vf[-1], w_t).tanh_())
        _, w_t, b, _, _ = self._vf[-1]
        values = torch.addmm(b, vf[-1], w_t).squeeze(1)
        return logits, values, [pi, vf]

    def backward_cached(
        self, cache: list[list[Tensor]], grad_logits: Tensor, grad_values: Tensor
    ) -> None:
        """Write ``dL/dθ`` into the parameters' gradients given ``dL/dlogits`` ``(batch,
        n_actions)`` and ``dL/dvalues`` ``(batch,)``, for the batch of :meth:`forward_cached`.
        Gradients are overwritten, not accumulated."""
        pi, vf = cache
        grad_pi = _linear_backward(self._pi[-1], pi[-1], grad_logits)
        grad_vf = _linear_backward(self._vf[-1], vf[-1], grad_values.unsqueeze(1))
        if self.shared:
            _trunk_backward(self._pi[:-1], pi, grad_pi.add_(grad_vf))
        else:
            _trunk_backward(self._pi[:-1], pi, grad_pi)
            _trunk_backward(self._vf[:-1], vf, grad_vf)

    def acting_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Both heads as one stack of ``(weight, bias)`` float32 numpy pairs, input to output:
        tanh after each but the last, whose output is the ``n_actions`` logits then the value.

        Separate stacks become one of twice the width (the first layers stacked, the later ones
        block-diagonal), so one observation takes as many matrix-vector products as layers.
        A copy: take it again after the weights change.
        """
        pi = [m for m in self.pi_trunk if isinstance(m, nn.Linear)] + [self.pi_head]
        vf: list[nn.Linear | None] = [None] * (len(pi) - 1) + [self.vf_head]
        if self.vf_trunk is not None:
            vf = [*(m for m in self.vf_trunk if isinstance(m, nn.Linear)), self.vf_head]
        out = []
        w: Tensor
        b: Tensor
        for i, (p, v) in enumerate(zip(pi, vf, strict=True)):
            if v is None:  # a shared hidden layer
                w, b = p.weight, p.bias
            else:
                # First layers see the same input: stacked. Later ones (and the separate heads)
                # see their own half of the previous output: block-diagonal.
                stack = i == 0 or (self.shared and v is self.vf_head)
                pair = (p.weight, v.weight)
                w = torch.cat(pair) if stack else torch.block_diag(*pair)
                b = torch.cat((p.bias, v.bias))
            out.append(
                (
                    np.ascontiguousarray(w.detach().cpu().numpy(), dtype=np.float32),
                    np.ascontiguousarray(b.detach().cpu().numpy(), dtype=np.float32),
                )
            )
        return out


def _linear_backward(layer: _Layer, x: Tensor, grad_out: Tensor) -> Tensor:
    """Write a linear layer's weight and bias gradients; return ``dL/dx``."""
    w, _, _, w_grad, b_grad = layer
    torch.mm(grad_out.t(), x, out=w_grad)
    torch.sum(grad_out, 0, out=b_grad)
    return grad_out.mm(w)


def _trunk_backward(layers: list[_Layer], inputs: list[Tensor], grad: Tensor) -> None:
    """Backpropagate ``dL/d(last hidden output)`` through a stack of linear + tanh layers;
    ``inputs`` is the stack's input then each layer's tanh output."""
    for i in range(len(layers) - 1, -1, -1):
        grad = _tanh_backward(grad, inputs[i + 1])
        if i:
            grad = _linear_backward(layers[i], inputs[i], grad)
        else:
            w, _, _, w_grad, b_grad = layers[0]
            torch.mm(grad.t(), inputs[0], out=w_grad)
            torch.sum(grad, 0, out=b_grad)


def _orthogonal(layer: nn.Linear, gain: float) -> None:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
