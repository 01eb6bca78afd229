"""A memory budget for explanations: batch sizes that fit, and a clear out-of-memory answer.

``max_memory`` is a size (``"8GB"``, ``"512MB"``, bytes as an int) or ``"auto"`` (the free
memory of the adapter's device: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of
``/proc/meminfo`` on the CPU, with a quarter kept back). :func:`plan_batches` turns it into
the number of windows per backward pass and of examples per forward pass (integrated gradients
steps, SmoothGrad samples) from an estimate of one window's activations (every convolution's
output on the window, traced once, times :data:`ACTIVATION_FACTOR` for what the backward pass
keeps: the convolution, normalisation and activation outputs and their gradients) and of the
arrays of the volume's size each example holds (the image and its logits, twice over for the
gradient).

An out-of-memory error inside the decorated entry points (:func:`answer_oom`) becomes an
:class:`OutOfMemory` whose message names what ran, on what size, and what to lower.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["ACTIVATION_FACTOR", "OutOfMemory", "answer_oom", "available_memory",
           "parse_memory", "plan_batches"]

#: Bytes kept per convolution output value during a window's backward pass (float32 output,
#: normalisation and activation outputs, and the gradient flowing back), over 4 bytes.
ACTIVATION_FACTOR = 4

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

F = TypeVar("F", bound=Callable[..., Any])


class OutOfMemory(MemoryError):
    """The device ran out of memory; the message says what to lower."""


def parse_memory(value: Any) -> int | None:
    """Bytes from ``"8GB"``, ``"512 MiB"``, an int, or None (no budget)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"max_memory: expected a positive size, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", value.upper())
        if m and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"max_memory: expected a size such as '8GB' or '512MB', bytes as an int, "
                     f"'auto' or None, got {value!r}")


def available_memory(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: ``mem_get_info``; CPU: ``MemAvailable``)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30  # unknown: assume a small machine


def budget_bytes(max_memory: Any, device: torch.device) -> int | None:
    """The budget in bytes: parsed, or for ``"auto"`` three quarters of the free memory."""
    if isinstance(max_memory, str) and max_memory.strip().lower() == "auto":
        return int(0.75 * available_memory(device))
    return parse_memory(max_memory)


def window_bytes(adapter: Any, roi: tuple[int, ...], channels: int) -> int:
    """Estimated bytes of one window's forward and backward pass (traced once per shape)."""
    shapes = adapter._trace((1, channels, *roi))
    values = sum(int(np.prod(s)) for _name, _m, s in shapes)
    return int(values * 4 * ACTIVATION_FACTOR)


def plan_batches(adapter: Any, x_shape: tuple[int, ...], budget: int) -> tuple[int, int]:
    """(windows per backward pass, examples per forward pass) that fit ``budget`` bytes.

    Half the budget goes to window activations, half to the per-example arrays of the
    volume's size; each is at least 1.
    """
    c, spatial = int(x_shape[1]), tuple(int(s) for s in x_shape[2:])
    k = adapter.output_channels or 2
    roi = tuple(adapter.sliding_window["roi_size"]) if adapter.sliding_window else spatial
    per_window = max(window_bytes(adapter, roi, c), 1)
    per_example = int(np.prod(spatial)) * (c + k) * 4 * 2
    windows = max(1, int(0.5 * budget // per_window))
    examples = max(1, int(0.5 * budget // max(per_example, 1)))
    return windows, examples


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text
        or isinstance(err, MemoryError))


def answer_oom(what: str) -> Callable[[F], F]:
    """Decorator: an out-of-memory error of ``fn(adapter, image, ...)`` -> :class:`OutOfMemory`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(adapter: Any, image: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(adapter, image, *args, **kwargs)
            except OutOfMemory:
                raise
            except (RuntimeError, MemoryError) as err:
                if not _is_oom(err):
                    raise
                where = "GPU" if getattr(adapter, "device", torch.device("cpu")).type == "cuda" \
                    else "host"
                shape = tuple(getattr(image, "shape", ()))
                sw = getattr(adapter, "sliding_window", None)
                hint = (f"the sliding window's sw_batch_size ({sw['sw_batch_size']}) or roi_size "
                        f"({tuple(sw['roi_size'])})" if sw else
                        "set a sliding window on the adapter (sliding_window=(96, 96, 96)) so "
                        "the network sees one window at a time")
                raise OutOfMemory(
                    f"{what} ran out of {where} memory on an image of shape {shape}: lower "
                    f"batch_size or max_memory= (or pass max_memory='auto'), {hint}"
                ) from None
        return inner  # type: ignore[return-value]

    return wrap
