"""A fake accelerator for CPU-only CI: tensors "on" it refuse NumPy as CUDA tensors do.

``on_fake_device(adapter)`` makes ``adapter.device`` report ``cuda:0`` while the arithmetic runs
on the CPU: every tensor moved or created there is an :class:`OffCPU` tensor, whose ``.device``
says ``cuda:0`` and whose ``numpy()`` / ``np.asarray`` raise the error a CUDA tensor raises.
``.cpu()`` / ``.to("cpu")`` return plain tensors, as on a real GPU. Code that lets a tensor of
another device meet NumPy fails here as it fails on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

FAKE = torch.device("cuda", 0)
_MESSAGE = ("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
            "tensor to host memory first.")


class OffCPU(torch.Tensor):
    """A CPU tensor that behaves, towards NumPy and ``.device``, like one on ``cuda:0``."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError(_MESSAGE)
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _to_cpu(args, kwargs)):
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        return super().__torch_function__(func, types, args, kwargs)


def _is_fake(dev: Any) -> bool:
    return dev is not None and str(dev).startswith("cuda")


def _to_cpu(args: Any, kwargs: Any) -> bool:
    dev = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(dev, (str, torch.device)) and str(dev).startswith("cpu")


class _FakeDeviceMode(TorchFunctionMode):
    """Tensors created or moved to ``cuda`` become CPU :class:`OffCPU` tensors."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        to_fake = False
        if _is_fake(kwargs.get("device")):
            kwargs["device"] = "cpu"
            to_fake = True
        if func in (torch.Tensor.to, torch.Tensor.cuda) and (
                func is torch.Tensor.cuda or any(_is_fake(a) for a in args[1:2])):
            args = (args[0], "cpu", *args[2:]) if func is torch.Tensor.to else (args[0],)
            func = torch.Tensor.to if func is torch.Tensor.to else (lambda t: t)
            to_fake = True
        out = func(*args, **kwargs)
        if to_fake and isinstance(out, torch.Tensor) and not isinstance(out, OffCPU):
            out = out.as_subclass(OffCPU)
        return out


@contextlib.contextmanager
def on_fake_device(adapter: Any) -> Iterator[Any]:
    """``adapter`` (a SegmentationAdapter on the CPU) reporting ``cuda:0`` for the block."""
    saved = adapter.device
    adapter.device = FAKE
    try:
        with _FakeDeviceMode():
            yield adapter
    finally:
        adapter.device = saved
