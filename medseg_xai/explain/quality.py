"""Is an explanation trustworthy? Sanity check, faithfulness curves, localisation.

- :func:`sanity_check`: cascading parameter randomisation (Adebayo et al., 2018). Layers are
  re-initialised from the head down, cumulatively; a map that still correlates strongly with
  the original after the weights are destroyed does not explain the model.
- :func:`deletion_insertion`: remove (or insert) voxels in order of attribution and follow the
  target's *lesion probability* (mean foreground probability inside the target mask); a
  faithful map makes the deletion curve fall fast (low AUC) and the insertion curve rise fast.
- :func:`localisation`: share of positive attribution that falls inside a mask.
- Gates for attribution maps used as evidence: :func:`map_gate` (constant or all-zero map),
  :func:`randomised_copy` + :func:`randomisation_similarity` (one-step parameter randomisation:
  every parameterised module re-initialised), :func:`completeness_error` against
  :data:`COMPLETENESS_TOLERANCE`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.core import Explanation, explain, prepare_image
from medseg_xai.targets import Target

__all__ = [
    "COMPLETENESS_TOLERANCE",
    "RANDOMISATION_MAX_SPEARMAN",
    "FaithfulnessCurves",
    "completeness_error",
    "deletion_insertion",
    "localisation",
    "map_gate",
    "randomisation_similarity",
    "randomised_copy",
    "sanity_check",
]

#: Largest relative completeness error |sum(attribution) - (f(x) - f(baseline))| / |f(x) -
#: f(baseline)| (floored, see :func:`completeness_error`) of a map accepted as evidence.
COMPLETENESS_TOLERANCE = 0.05
#: A map whose |attribution| ranks still correlate at least this much (Spearman) with the map of
#: the fully randomised model explains the input, not the model (Adebayo et al. 2018).
RANDOMISATION_MAX_SPEARMAN = 0.8


# ---------------------------------------------------------------------- localisation
def localisation(attribution: Any, mask: Any) -> float:
    """Share of the positive attribution that lies inside ``mask`` (0..1).

    Parameters
    ----------
    attribution : array or Explanation
        Map with the image's spatial shape.
    mask : array
        Boolean region of the same shape (target region or reference lesion).

    Returns
    -------
    float
        ``sum(max(a, 0)[mask]) / sum(max(a, 0))``; NaN when no attribution is positive.
    """
    a = np.asarray(attribution.attribution if isinstance(attribution, Explanation) else attribution,
                   dtype=np.float64)
    m = np.asarray(mask)
    if a.shape != m.shape:
        raise ValueError(
            f"attribution and mask: expected the same shape, got {a.shape} and {m.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("attribution: contains NaN or infinite values")
    pos = np.clip(a, 0.0, None)
    total = pos.sum()
    if total <= 0:
        return float("nan")
    # the two sums round differently: keep a share in [0, 1]
    return float(min(1.0, pos[m.astype(bool)].sum() / total))


# ---------------------------------------------------------------------- sanity check
def _execution_order(adapter: SegmentationAdapter, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in the order the forward pass first calls them."""
    owners = {
        id(m): (n, m)
        for n, m in adapter.model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    }
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    handles = []

    def hook(module: nn.Module, *_: Any) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(owners[id(module)])

    try:
        for _, m in owners.values():
            handles.append(m.register_forward_pre_hook(hook))
        with torch.no_grad(), adapter.frozen():
            adapter.forward_logits(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _randomise(module: nn.Module, generator_seed: int) -> None:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.normal_(0.0, std or 1.0)


def sanity_check(
    adapter: SegmentationAdapter,
    image: Any,
    target: Target,
    method: str = "gradcam",
    layer: str | None = None,
    *,
    max_steps: int = 6,
    seed: int = 0,
    batch_size: int | None = None,
    reference: Explanation | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Cascading parameter randomisation from the head down (Adebayo et al. 2018).

    The model is deep-copied once; the copy's parameterised modules are re-initialised
    cumulatively in reverse execution order (head first), and after each of ``max_steps``
    evenly spaced checkpoints the explanation is recomputed and compared with the original by
    Spearman rank correlation (of the signed map and of its absolute value).

    Parameters
    ----------
    adapter, image, target, method, layer, batch_size, **kwargs
        As for :func:`~medseg_xai.explain.explain`.
    max_steps : int
        Number of checkpoints (the cascade always ends with every module randomised).
    seed : int
        Seed of the re-initialisation.
    reference : Explanation, optional
        The original explanation, if already computed.

    Returns
    -------
    pandas.DataFrame
        One row per checkpoint plus the original: ``step``, ``randomised_to`` (the deepest
        module name randomised so far), ``n_randomised``, ``fraction_randomised``, ``spearman``,
        ``spearman_abs``. ``attrs`` hold ``method`` and ``layer``. A constant map gives NaN.
    """
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
    original = reference or explain(adapter, image, target, method, layer, batch_size, **kwargs)
    layer_name = original.layer
    x = prepare_image(adapter, image)

    clone = copy.copy(adapter)
    clone.model = copy.deepcopy(adapter.model)  # the only deep copy
    clone._default_layers = {}
    order = _execution_order(clone, x)[::-1]
    if not order:
        raise ValueError("sanity_check: the model has no parameters to randomise")
    n = len(order)
    cuts = sorted({int(round(n * (i + 1) / min(max_steps, n))) for i in range(min(max_steps, n))})

    base = original.attribution.ravel()
    rows = [{"step": 0, "randomised_to": "none", "n_randomised": 0, "fraction_randomised": 0.0,
             "spearman": 1.0, "spearman_abs": 1.0}]
    done = 0
    for step, cut in enumerate(cuts, start=1):
        for i in range(done, cut):
            _randomise(order[i][1], seed + i)
        done = cut
        exp = explain(clone, image, target, method, layer_name, batch_size, **kwargs)
        rows.append({
            "step": step,
            "randomised_to": order[cut - 1][0],
            "n_randomised": cut,
            "fraction_randomised": cut / n,
            "spearman": _spearman(base, exp.attribution.ravel()),
            "spearman_abs": _spearman(np.abs(base), np.abs(exp.attribution.ravel())),
        })
    df = pd.DataFrame(rows)
    df.attrs["method"] = method
    df.attrs["layer"] = layer_name
    return df


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")  # rank correlation is undefined for a constant map
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------------- gates
def map_gate(attribution: Any) -> str | None:
    """Why a map cannot be evidence (``"all-zero map"``, ``"constant map"``, ``"non-finite
    values"``), or None when it varies."""
    a = np.asarray(attribution, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        return "non-finite values"
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak == 0.0:
        return "all-zero map"
    if float(a.max() - a.min()) <= 1e-9 * peak:
        return "constant map"
    return None


def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters are leaves (re-initialisable, freezable).

    ``copy.deepcopy`` of a TorchScript module clones each parameter through autograd (non-leaf
    tensors: freezing them then fails with "you can only change requires_grad flags of leaf
    variables"), so TorchScript goes through a save/load round trip instead.
    """
    if isinstance(model, torch.jit.ScriptModule):
        import io

        buf = io.BytesIO()
        torch.jit.save(model, buf)
        buf.seek(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.jit.load(buf, map_location=device)
    return copy.deepcopy(model)


def randomised_copy(adapter: SegmentationAdapter, seed: int = 0) -> SegmentationAdapter:
    """A copy of the adapter whose model has every parameterised module re-initialised.

    The last step of the cascading randomisation of :func:`sanity_check`, for a one-step
    check: ``reset_parameters()`` where the module has it (else a normal draw with the
    parameter's own standard deviation), module ``i`` with seed ``seed + i``.
    """
    clone = copy.copy(adapter)
    clone._default_layers = {}
    own = getattr(adapter.model, "randomised", None)
    if callable(own):  # models with their own weights format (ONNX initialisers)
        clone.model = own(seed)
        return clone
    clone.model = _copy_model(adapter.model)
    params = [m for _, m in clone.model.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    if not params:
        raise ValueError("the model has no parameters to randomise")
    for i, module in enumerate(params):
        _randomise(module, seed + i)
    return clone


def randomisation_similarity(original: Any, randomised: Any, region: Any = None) -> float:
    """Spearman correlation of |original| and |randomised| (inside ``region`` when given).

    NaN when either map is constant there (nothing to rank).
    """
    a = np.abs(np.asarray(original, dtype=np.float64))
    b = np.abs(np.asarray(randomised, dtype=np.float64))
    if region is not None:
        m = np.asarray(region, dtype=bool)
        a, b = a[m], b[m]
    else:
        a, b = a.ravel(), b.ravel()
    if a.size < 3:
        return float("nan")
    return _spearman(a, b)


def completeness_error(total: float, f_input: float, f_baseline: float,
                       floor: float = 1e-2) -> float:
    """Relative completeness error of a path attribution.

    ``|total - (f_input - f_baseline)| / max(|f_input - f_baseline|, floor)``: integrated
    gradients and DeepLift should sum to the change of the target between baseline and input;
    the floor (in target units, logits) keeps a near-zero change from inflating the ratio.
    """
    diff = float(f_input) - float(f_baseline)
    return abs(float(total) - diff) / max(abs(diff), float(floor))


# ---------------------------------------------------------------------- faithfulness
@dataclass
class FaithfulnessCurves:
    """Deletion and insertion curves of the target's lesion probability.

    Attributes
    ----------
    fractions : numpy.ndarray
        Share of voxels removed (deletion) or inserted (insertion), 0..1.
    deletion, insertion : numpy.ndarray
        Mean foreground probability of ``class_index`` inside the target mask at each fraction.
    auc_deletion, auc_insertion : float
        Trapezoidal areas under the curves (lower deletion / higher insertion = more faithful).
    class_index : int
    baseline : float
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    auc_deletion: float
    auc_insertion: float
    class_index: int
    baseline: float

    def to_frame(self) -> pd.DataFrame:
        """Columns ``fraction, deletion, insertion``."""
        return pd.DataFrame(
            {"fraction": self.fractions, "deletion": self.deletion, "insertion": self.insertion}
        )


def _lesion_probability(
    adapter: SegmentationAdapter, batch: torch.Tensor, target: Target, weights: torch.Tensor
) -> np.ndarray:
    p = adapter.probabilities(batch)[:, target.class_index]
    dims = tuple(range(1, p.ndim))
    return ((p * weights).sum(dim=dims) / weights.sum()).float().cpu().numpy()


def _check_curve_args(target: Any, steps: Any, batch_size: Any) -> None:
    """Check deletion_insertion's target, steps and batch size."""
    if not isinstance(target, Target):
        raise ValueError(
            f"target: deletion_insertion needs a medseg_xai.targets.Target (mask and class), "
            f"got {type(target).__name__}"
        )
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")


def _curve_attribution(attribution: Any, target: Target, spatial: tuple[int, ...]) -> np.ndarray:
    """The attribution map as float64, checked against the image's and the mask's shape."""
    attr = np.asarray(
        attribution.attribution if isinstance(attribution, Explanation) else attribution,
        dtype=np.float64,
    )
    if attr.shape != spatial:
        raise ValueError(
            f"attribution: expected the image's spatial shape {spatial}, got {attr.shape}"
        )
    if target.mask.shape != spatial:
        raise ValueError(
            f"target: mask shape {target.mask.shape} differs from the image's spatial shape {spatial}"
        )
    if not np.all(np.isfinite(attr)):
        raise ValueError("attribution: contains NaN or infinite values")
    return attr


def _curve(adapter: SegmentationAdapter, x: torch.Tensor, base: torch.Tensor, target: Target,
           weights: torch.Tensor, rank_t: torch.Tensor, ks: torch.Tensor, chunk: int,
           mode: str) -> np.ndarray:
    """One curve: the lesion probability as the top-ranked voxels are deleted or inserted."""
    spatial = tuple(x.shape[2:])
    values = []
    for start in range(0, len(ks), chunk):
        k = ks[start : start + chunk]
        top = (rank_t[None] < k.reshape(-1, *[1] * len(spatial)))[:, None]  # (B,1,*s)
        if mode == "deletion":
            batch = torch.where(top, base, x)
        else:
            batch = torch.where(top, x, base)
        values.append(_lesion_probability(adapter, batch, target, weights))
    return np.concatenate(values).astype(np.float64)


def deletion_insertion(
    adapter: SegmentationAdapter,
    image: Any,
    target: Target,
    attribution: Any,
    *,
    steps: int = 20,
    baseline: float = 0.0,
    batch_size: int | None = 4,
) -> FaithfulnessCurves:
    """Deletion and insertion curves on the target's lesion probability.

    Voxels (all channels together) are ranked by attribution, highest first. Deletion sets the
    top fraction to ``baseline``; insertion starts from an all-``baseline`` image and restores
    the top fraction. The score is the mean ``class_index`` probability inside the target mask
    (what a clinician reads as "is the lesion there"), not a logit or class score.

    Parameters
    ----------
    adapter, image, target
        As for :func:`~medseg_xai.explain.explain`; ``target`` must be a Target (mask + class).
    attribution : array or Explanation
        Map with the image's spatial shape.
    steps : int
        Number of increments; the curves have ``steps + 1`` points.
    baseline : float
        Value of removed voxels.
    batch_size : int, optional
        Perturbed images per forward pass (None: all at once).
    """
    _check_curve_args(target, steps, batch_size)
    x = prepare_image(adapter, image)
    spatial = tuple(x.shape[2:])
    attr = _curve_attribution(attribution, target, spatial)

    n_vox = attr.size
    order = np.argsort(-attr.ravel(), kind="stable")
    rank = np.empty(n_vox, dtype=np.int64)
    rank[order] = np.arange(n_vox)
    rank_t = torch.from_numpy(rank.reshape(spatial)).to(x.device)
    weights = torch.as_tensor(target.mask, dtype=torch.float32, device=x.device)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    ks = torch.as_tensor(np.round(fractions * n_vox).astype(np.int64), device=x.device)
    base = torch.full_like(x, float(baseline))
    chunk = batch_size or len(fractions)

    curves = {mode: _curve(adapter, x, base, target, weights, rank_t, ks, chunk, mode)
              for mode in ("deletion", "insertion")}

    return FaithfulnessCurves(
        fractions=fractions,
        deletion=curves["deletion"],
        insertion=curves["insertion"],
        auc_deletion=float(np.trapezoid(curves["deletion"], fractions)),
        auc_insertion=float(np.trapezoid(curves["insertion"], fractions)),
        class_index=target.class_index,
        baseline=float(baseline),
    )
