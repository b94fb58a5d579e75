"""Adam on one flat parameter tensor: the update of ``torch.optim.Adam``, a few ops per step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class FlatAdam:
    """Adam (Kingma & Ba, 2015) for a single tensor holding every parameter, gradient in ``.grad``.

    The update is ``torch.optim.Adam``'s (no weight decay, no AMSGrad): ``m = lerp(m, g, 1 - b1)``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    ``torch.optim.Adam.step`` spends most of a small network's step in per-call bookkeeping
    (profiler hooks, grouping tensors by device); on one flat tensor this class is six tensor
    ops, about a third of the time (``benchmarks/profile_notes.md``).

    Args:
        params: the flat parameter tensor, not requiring grad (the update runs outside autograd
            without a ``no_grad`` context); its ``.grad`` must be set before :meth:`step`.
        lr: step size (``learning_rate``).
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
    """

    def __init__(
        self,
        params: Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if params.requires_grad:
            raise ValueError("FlatAdam needs a parameter tensor with requires_grad=False")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.steps = 0
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)

    def step(self) -> None:
        """One Adam update of :attr:`params` from ``params.grad``."""
        grad = self.params.grad
        if grad is None:
            raise RuntimeError("FlatAdam.step() called before params.grad was set")
        beta1, beta2 = self.betas
        self.steps += 1
        bias_correction1 = 1.0 - beta1**self.steps
        root_bias_correction2 = math.sqrt(1.0 - beta2**self.steps)
        self.exp_avg.lerp_(grad, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        # m / (sqrt(v) / c2 + eps) == c2 * m / (sqrt(v) + eps * c2): one op fewer.
        denom = self.exp_avg_sq.sqrt().add_(self.eps * root_bias_correction2)
        step_size = self.lr * root_bias_correction2 / bias_correction1
        self.params.addcdiv_(self.exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        """The moment estimates (copies), the step count and the hyperparameters."""
        return {
            "steps": self.steps,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the moments and step count of :meth:`state_dict`; ``lr``, betas and eps stay.

        Raises:
            ValueError: the saved moments do not match the parameter tensor's shape.
        """
        for name in ("exp_avg", "exp_avg_sq"):
            saved: Tensor = state[name]
            if saved.shape != self.params.shape:
                raise ValueError(
                    f"optimizer {name} has shape {tuple(saved.shape)}, "
                    f"parameters {tuple(self.params.shape)}"
                )
            getattr(self, name).copy_(saved)
        self.steps = int(state["steps"])
