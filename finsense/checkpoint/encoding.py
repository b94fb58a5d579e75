"""Serialisation of a checkpoint's files, and the ``weights_only`` safety check.

A checkpoint is data, never code: a state is refused at save time when
``torch.load(weights_only=True)`` would refuse it, and files are always read back with that loader.
"""

from __future__ import annotations

import io
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from finsense.checkpoint.durable import _one_line


def _serialise(obj: Mapping[str, Any], what: str, *, zip_crc32: bool = True) -> memoryview:
    """``torch.save(obj)`` into memory, refusing what ``weights_only`` loading would refuse.

    ``zip_crc32=False`` skips the zip's per-record CRC-32, which is most of the cost of
    serialising a big buffer and which ``torch.load`` does not check; the SHA-256 recorded in
    the JSON covers every byte anyway. (Only ``unzip -t`` would then complain.)
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"{what} must be a dict, not a {type(obj).__name__}")
    buffer = io.BytesIO()
    # The switch is process-wide; it is restored at once (torch.save elsewhere is not threaded).
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(zip_crc32)
    try:
        torch.save(obj, buffer)
    finally:
        torch.serialization.set_crc32_options(crc32)
    data = buffer.getbuffer()
    if not _plainly_loadable(obj):
        try:
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # any refusal means the checkpoint could never be read back
            raise TypeError(
                f"{what} holds values that torch.load(weights_only=True) refuses "
                f"({_one_line(exc)}); keep only tensors and plain Python values in it"
            ) from exc
    return data


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_CONTAINERS = (dict, list, tuple, set, torch.Size, OrderedDict, Counter)


def _serialise_pair(
    state: Mapping[str, Any], training_state: Mapping[str, Any] | None
) -> tuple[memoryview, memoryview | None]:
    """The bytes of a checkpoint's model file and companion (without the zip's CRC-32: the
    SHA-256 covers it)."""
    training = (
        None
        if training_state is None
        else _serialise(training_state, "training_state", zip_crc32=False)
    )
    return _serialise(state, "state"), training


def _plainly_loadable(obj: Any) -> bool:
    """Whether ``obj`` is built only from types that ``weights_only`` loading always accepts."""
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in (torch.Tensor, torch.nn.Parameter) or isinstance(item, _PLAIN):
            continue
        if kind in _CONTAINERS:
            stack.extend(item.values() if isinstance(item, dict) else item)
            continue
        return False
    return True


def _deserialise(data: bytes, map_location: str) -> Any:
    """``torch.load(weights_only=True)`` of ``data`` (the loader built for untrusted input)."""
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
