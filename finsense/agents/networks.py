"""The Q-network: an MLP from observations to one Q-value per action, optionally dueling.

Besides the usual ``forward``, a :class:`QNetwork` prepared by :meth:`QNetwork.flatten_` can run a
forward pass that keeps each layer's input (:meth:`QNetwork.forward_cached`) and then write the
parameter gradients of a given ``dL/dQ`` by hand (:meth:`QNetwork.backward_cached`). For a network
this small, autograd's bookkeeping costs more than the arithmetic; the hand-written backward pass
is a handful of matrix products and makes DQN's gradient step several times cheaper
(``benchmarks/profile_notes.md``). ``tests/test_agent.py`` checks it against autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from finsense.errors import ConfigError

# ReLU's gradient: dL/dx where the ReLU output is > 0, else 0; autograd's own ReLU backward,
# one op with no boolean mask in between.
_relu_backward = torch.ops.aten.threshold_backward


def check_hidden_sizes(hidden_sizes: Any) -> tuple[int, ...]:
    """``agent.network.hidden_sizes`` as a tuple, or one line: a non-empty list of positive
    integers."""
    ok = isinstance(hidden_sizes, Sequence) and not isinstance(hidden_sizes, str)
    if not (
        ok
        and hidden_sizes
        and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden_sizes)
    ):
        raise ConfigError(
            "agent.network.hidden_sizes must be a non-empty list of positive integers, got "
            f"{hidden_sizes!r}"
        )
    return tuple(int(h) for h in hidden_sizes)


def flatten_parameters(module: nn.Module) -> tuple[Tensor, Tensor]:
    """Make every parameter of ``module``, and its gradient, a view of one of two flat tensors.

    Values are kept and ``parameters()`` order is the flat order, so a whole-network operation (an
    optimizer step, the gradient norm, a copy into another network) is one tensor op. Parameters
    stop requiring grad: gradients are written by hand into their ``.grad`` views.
    ``load_state_dict`` keeps working (it copies in place); moving the module to another device
    or assigning new parameters afterwards breaks the views.

    Returns:
        ``(params, grads)``: 1-D tensors with ``params.grad is grads``.
    """
    params = list(module.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grads = torch.zeros_like(flat)
    offset = 0
    for owner in module.modules():
        for name, p in list(owner.named_parameters(recurse=False)):
            n = p.numel()
            view = nn.Parameter(flat[offset : offset + n].view_as(p), requires_grad=False)
            view.grad = grads[offset : offset + n].view_as(p)
            setattr(owner, name, view)
            offset += n
    flat.grad = grads
    return flat, grads


class QNetwork(nn.Module):
    """Q-values of every action: ``(batch, obs_dim)`` float32 -> ``(batch, n_actions)``.

    Hidden layers are ``Linear`` + ReLU of ``hidden_sizes`` units. The head is one ``Linear``:
    with ``n_actions`` outputs (the Q-values), or, with ``dueling``, ``n_actions + 1`` outputs:
    the advantages ``A(s, a)`` then the state value ``V(s)``, combined as
    ``Q = V + A - mean_a(A)`` (Wang et al., 2016; one linear layer with both outputs equals two
    separate linear streams on the shared trunk). A single observation ``(obs_dim,)`` gives
    ``(n_actions,)``. Weights start as PyTorch's ``Linear`` default initialisation.

    The network is fully described by :attr:`arch`, so it can be rebuilt from a checkpoint with
    :meth:`from_arch` and its ``state_dict``.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        dueling: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.hidden_sizes = check_hidden_sizes(hidden_sizes)
        self.dueling = bool(dueling)
        sizes = (self.obs_dim, *self.hidden_sizes)
        self.hidden = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(sizes[-1], self.n_actions + 1 if self.dueling else self.n_actions)
        # Per layer, input to output, once flatten_() fixed the parameter tensors:
        # (weight, weight.t(), bias, weight.grad, bias.grad).
        self._flat: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []

    @property
    def arch(self) -> dict[str, Any]:
        """What the network's shape is made of, as plain values (saved next to its weights)."""
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "hidden_sizes": list(self.hidden_sizes),
            "dueling": self.dueling,
        }

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> QNetwork:
        """A network of the shape described by ``arch`` (as returned by :attr:`arch`)."""
        return cls(
            int(arch["obs_dim"]),
            int(arch["n_actions"]),
            tuple(arch["hidden_sizes"]),
            bool(arch["dueling"]),
        )

    def forward(self, obs: Tensor) -> Tensor:
        """Q-values of ``obs``: ``(batch, obs_dim) -> (batch, n_actions)`` or unbatched."""
        h = obs
        for layer in self.hidden:
            h = layer(h).relu_()
        return self._combine(self.head(h))

    def _combine(self, out: Tensor) -> Tensor:
        if not self.dueling:
            return out
        advantage, value = out[..., :-1], out[..., -1:]
        return advantage - advantage.mean(-1, keepdim=True) + value

    # -- training without autograd ------------------------------------------------------------
    def flatten_(self) -> tuple[Tensor, Tensor]:
        """:func:`flatten_parameters` of this network, then keep its per-layer tensors for
        :meth:`forward_cached`/:meth:`backward_cached` (which writes the gradients)."""
        flat, grads = flatten_parameters(self)
        self._flat = []
        for layer in (*self.hidden, self.head):
            w, b = layer.weight, layer.bias
            assert w.grad is not None and b.grad is not None
            self._flat.append((w, w.t(), b, w.grad, b.grad))
        return flat, grads

    def forward_cached(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Q-values of a batch ``obs`` and the cache :meth:`backward_cached` needs (layer inputs).

        Requires :meth:`flatten_`. Records no autograd graph (parameters do not require grad).
        """
        inputs = [obs]
        h = obs
        for _, w_t, b, _, _ in self._flat[:-1]:
            h = torch.addmm(b, h, w_t).relu_()
            inputs.append(h)
        _, w_t, b, _, _ = self._flat[-1]
        return self._combine(torch.addmm(b, h, w_t)), inputs

    def forward_flat(self, obs: Tensor) -> Tensor:
        """:meth:`forward` for a batch, with :meth:`flatten_`'s per-layer tensors (fewer ops)."""
        h = obs
        for _, w_t, b, _, _ in self._flat[:-1]:
            h = torch.addmm(b, h, w_t).relu_()
        _, w_t, b, _, _ = self._flat[-1]
        return self._combine(torch.addmm(b, h, w_t))

    def backward_cached(self, inputs: list[Tensor], grad_q: Tensor) -> None:
        """Write ``dL/dθ`` into the parameters' gradients given ``grad_q = dL/dQ``.

        Args:
            inputs: the cache of :meth:`forward_cached`, for a batch of at least
                ``len(grad_q)`` rows; only its first ``len(grad_q)`` rows enter the gradient (so
                one forward pass can also serve rows that need no gradient, such as next states).
            grad_q: ``(n, n_actions)``, the loss gradient with respect to the Q-values.

        Requires :meth:`flatten_`. Gradients are overwritten, not accumulated.
        """
        n = grad_q.shape[0]
        grad = grad_q
        if self.dueling:
            # Q = A - mean(A) + V: dL/dA = g - mean(g), dL/dV = sum(g).
            grad = torch.cat((grad - grad.mean(1, keepdim=True), grad.sum(1, keepdim=True)), 1)
        for i in range(len(self._flat) - 1, -1, -1):
            w, _, _, w_grad, b_grad = self._flat[i]
            x = inputs[i][:n]
            torch.mm(grad.t(), x, out=w_grad)
            torch.sum(grad, 0, out=b_grad)
            if i > 0:
                grad = _relu_backward(grad.mm(w), x, 0)
