"""Helpers shared by the unit and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import torch

from finsense.checkpoint.chunks import Chunked


def assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Recursively assert two loaded states are identical (tensors bit for bit)."""
    if isinstance(a, Chunked):  # a chunked tensor of a live state (not loaded yet)
        assert isinstance(b, Chunked), where
        assert_same_state(a.tensor, b.tensor, f"{where}.tensor")
        assert list(a.stamps or ()) == list(b.stamps or ()), f"stamps differ at {where}"
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {where}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"value differs at {where}: {a!r} != {b!r}"


def run_into_closed_pipe(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe whose reader is gone before the first byte (``| head``);
    stderr is captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, **kwargs)
    finally:
        os.close(write_end)
