"""The model's output on one region of a changed image, from the windows that cover it.

Under sliding-window inference the blended logits at a voxel depend only on the windows that
contain it: ``L(v) = sum_w f_w(v) * imp(v - o_w) / count(v)``, and a window's output ``f_w``
depends only on the image inside that window. A probe of the miss analysis changes the image
and then reads the probabilities inside one mask (the lesion, or where it was moved), so it
needs only the windows overlapping that mask's box; among those, a window whose content equals
the original image's reuses the original's output (computed once and kept). The blend repeats
MONAI's arithmetic (``output += f * imp`` window by window in MONAI's order, then ``/=
count``), so the region's logits are MONAI's up to the batch composition of the windows
(floating-point rounding of the network, ~1e-7).

Without a sliding window the network sees the whole image (instance normalisation, global
pooling): no region is independent of the rest, and the whole image is run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medseg_xai.explain.windowed import _pad, blend, overlapping, window_plan

__all__ = ["WindowCache", "mask_box"]


def mask_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding a non-empty mask."""
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


class WindowCache:
    """Window outputs of one original image, and region logits of changed copies of it.

    Parameters
    ----------
    adapter : SegmentationAdapter
        With ``sliding_window`` set.
    original : numpy.ndarray
        ``(C, *spatial)`` float32: the image the probes change.
    batch : int, optional
        Windows per forward pass (default the adapter's ``sw_batch_size``).
    """

    def __init__(self, adapter: Any, original: np.ndarray, batch: int | None = None) -> None:
        cfg = adapter.sliding_window
        if cfg is None:
            raise ValueError("WindowCache: the adapter has no sliding_window")
        self.adapter = adapter
        self.cfg = cfg
        self.plan = window_plan(original.shape[1:], cfg, torch.device("cpu"), torch.float32)
        self.batch = int(batch or cfg.get("sw_batch_size", 1))
        self.before = [self.plan.pad[2 * k] for k in range(len(original.shape) - 2, -1, -1)]
        self.original = self._padded(original)
        self._outputs: dict[int, torch.Tensor] = {}
        self.n_windows_run = 0  # windows the network actually ran (the work done)

    def _padded(self, image: np.ndarray) -> torch.Tensor:
        return _pad(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
                    self.plan, self.cfg)[0]

    def _run(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        dev = self.adapter.device
        with torch.no_grad(), self.adapter.frozen(freeze_parameters=False):
            for i in range(0, len(windows), self.batch):
                chunk = torch.stack(windows[i : i + self.batch]).to(dev)
                y = self.adapter._model_forward(chunk).float().cpu()
                out.extend(y.unbind(0))
                self.n_windows_run += len(chunk)
        return out

    def region_logits(self, image: np.ndarray, box: tuple[slice, ...]) -> torch.Tensor:
        """Blended logits ``(K, *box)`` of ``image`` (the original's shape) inside ``box``."""
        xp = self._padded(image)
        boxp = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.before))
        need = overlapping(self.plan, boxp)
        outputs: dict[int, torch.Tensor] = {}
        fresh: list[int] = []
        for i in need:
            sl = (slice(None), *self.plan.slices[i])
            if torch.equal(xp[sl], self.original[sl]):
                if i not in self._outputs:
                    fresh.append(-1 - i)  # the original's window, kept for later probes
                else:
                    outputs[i] = self._outputs[i]
            else:
                fresh.append(i)
        src = [self.original if j < 0 else xp for j in fresh]
        idx = [-1 - j if j < 0 else j for j in fresh]
        ran = self._run([s[(slice(None), *self.plan.slices[i])] for s, i in zip(src, idx)])
        for j, i, y in zip(fresh, idx, ran):
            outputs[i] = y
            if j < 0:
                self._outputs[i] = y
        return blend(self.plan, need, outputs, boxp)  # MONAI's order and arithmetic
