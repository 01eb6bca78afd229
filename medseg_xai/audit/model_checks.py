"""Checks of a model's output inside an audit (issue 28): nothing silently wrong.

- :func:`check_output_channels`: the channel count against the activation and the audit's
  labels. A one-channel model under softmax is 1 everywhere (every voxel foreground: Dice
  0.00-0.015 without a word); a 3-class model on a binary audit produced label 2 that nothing
  expected. Both fail the case's row naming the channels, the activation and the labels.
- :func:`case_seed`: torch's generator seeded per case from the audit's seed and the case id,
  so a model with stochastic layers (dropout left on) gives the same audit for the same seed on
  any executor and in any order.
- :func:`determinism_probe`: two passes on one case; a difference is reported (the audit is
  reproducible by seeding, but its numbers are one draw of a random model).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["case_seed", "check_output_channels", "determinism_probe"]


def _foreground(labels: Iterable[int] | Mapping[int, Any] | None) -> list[int]:
    if labels is None:
        return [1]
    values = labels.keys() if isinstance(labels, Mapping) else labels
    return sorted(int(v) for v in values if int(v) != 0)


def check_output_channels(case_id: str, n_channels: int, activation: str,
                          labels: Iterable[int] | Mapping[int, Any] | None,
                          binarize: bool = False) -> None:
    """Raise a ``ValueError`` (the case's row fails) when the output cannot mean the labels.

    Softmax (or ``"none"``): channel ``k`` is label ``k``, so ``max(label) + 1`` channels are
    expected (2 for a binary audit); one channel is refused outright. Sigmoid: one channel per
    foreground label (1 for a binary audit). With ``binarize`` every foreground class counts,
    so only the one-channel softmax is refused.
    """
    fg = _foreground(labels)
    shown = "binary {0, 1}" if labels is None else f"labels {fg}"
    if activation != "sigmoid" and n_channels == 1:
        raise ValueError(
            f"case {case_id!r}: model output: 1 channel with activation {activation!r} (a softmax "
            "over one channel is 1 everywhere: every voxel would be foreground); expected "
            "activation 'sigmoid' for a one-channel model")
    if binarize:
        return
    expected = len(fg) if activation == "sigmoid" else max(fg, default=0) + 1
    if n_channels != expected:
        raise ValueError(
            f"case {case_id!r}: model output: {n_channels} channels with activation "
            f"{activation!r}, but the audit's labels are {shown}; expected {expected} "
            f"channel(s) (declare the model's classes with --labels / labels=, or --binarize)")


def case_seed(seed: int, case_id: str) -> int:
    """A per-case torch seed from the audit's seed and the case id (order-independent)."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode("utf-8"))) % (2**63 - 1)


def determinism_probe(adapter: Any, image: np.ndarray, seed: int) -> float:
    """Largest absolute difference of the output probabilities between two passes on one
    image with different torch seeds (0.0 for a deterministic model)."""
    return _two_passes(adapter, image, seed)["max_abs_diff"]


def _two_passes(adapter: Any, image: np.ndarray, seed: int,
                affine: np.ndarray | None = None) -> dict[str, Any]:
    import torch

    # bound to the scan's geometry as the runner does (nnU-Net resamples from its spacing)
    bind = getattr(adapter, "with_geometry", None)
    adapter = bind(None, affine) if callable(bind) and affine is not None else adapter
    outs = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        # the path the audit predicts with (nnU-Net: its own predictor)
        outs.append(adapter.inference_logits(image).detach().cpu().numpy())
    probs = [adapter._activate(torch.from_numpy(o)).numpy() for o in outs]
    diff = float(np.max(np.abs(probs[0] - probs[1]))) if probs[0].size else 0.0
    return {"max_abs_diff": diff, "n_channels": int(outs[0].shape[1])}


#: Largest output difference between two passes still read as "the same" (float noise).
DETERMINISM_ATOL = 1e-5


@dataclass
class _ProbeTask:
    """One probe as a task of :func:`medseg_xai.audit.isolated.isolated` (killable worker)."""

    row: int
    case_id: str
    path: str
    seed: int


def _probe_task(task: _ProbeTask, adapter: Any = None) -> dict[str, Any]:
    from medseg_xai.audit import workerstate
    from medseg_xai.cohort import load_volume

    model = workerstate.resolve(adapter)
    try:
        image, affine = load_volume(task.path, what="image", case_id=task.case_id)
        return {"status": "ok", **_two_passes(model, image, task.seed, affine)}
    except Exception as exc:  # noqa: BLE001 - the case's row reports its own fault
        return {"status": "failed", "error": str(exc)}


def probe_model(adapter: Any, cohort: Any, seed: int, *, case_timeout: float | None = None,
                mp_context: str | None = None, worker_init: Any = None,
                preload: Any = None) -> dict[str, Any] | None:
    """Two passes on the cohort's first loadable case (with ``case_timeout``: in a killable
    worker, so a model that never returns cannot hang the audit here either).

    Warns when the passes differ. An adapter marked ``activation_auto`` (the CLI's
    ``--activation auto``) with one output channel becomes a sigmoid model. Returns what the
    audit's provenance records (None: no case could be probed).
    """
    bad = set(cohort.problems["case_id"]) if len(cohort.problems) else set()
    tasks = [_ProbeTask(0, cid, cohort.paths(cid)["image"], int(seed))
             for cid in cohort.case_ids[:5] if cid not in bad]
    for task in tasks[:3]:  # a few tries: a broken first case fails in its own row
        if case_timeout:
            from medseg_xai.audit.isolated import isolated

            # the runner's worker initializer / preload, passed in (no import cycle)
            rec = next(iter(isolated(_probe_task, [task], 1, adapter, case_timeout, mp_context,
                                     init=worker_init, preload=preload)))
        else:
            rec = _probe_task(task, adapter)
        if rec.get("status") != "ok":
            if "timeout" in str(rec.get("error", "")):
                return {"case_id": task.case_id, "error": "timeout"}  # the rows say the rest
            continue
        return _report(adapter, task.case_id, rec)
    return None


def _report(adapter: Any, cid: str, rec: dict[str, Any]) -> dict[str, Any]:
    import warnings

    if (rec["n_channels"] == 1 and getattr(adapter, "activation_auto", False)
            and adapter.activation != "sigmoid"):
        adapter.activation = "sigmoid"  # a softmax over one channel is 1 everywhere
        warnings.warn("model: one output channel: activation 'sigmoid' (--activation to "
                      "choose)", stacklevel=3)
    diff = rec["max_abs_diff"]
    deterministic = diff <= DETERMINISM_ATOL
    if not deterministic:
        warnings.warn(
            f"model: two passes on case {cid!r} differ (largest probability difference "
            f"{diff:.3g}): the model is not deterministic (dropout left on, sampling "
            "layers). Each case is seeded from the audit's seed, so the same seed gives the "
            "same audit, but its numbers are one draw of a random model", stacklevel=3)
    return {"case_id": cid, "max_abs_diff": round(diff, 9), "deterministic": deterministic}
