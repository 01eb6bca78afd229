"""Where the audit's per-case uncertainty comes from (issue 27): test-time variants of the
audited model, the fold models of an nnU-Net model, or several models (an ensemble).

``mx.audit(..., uncertainty_members="folds" | [adapter, other, ...])`` makes the members the
given models (each with every augmentation of ``uncertainty=``; without ``uncertainty=`` the
models alone). The case metrics stay those of the audited ``adapter`` (for nnU-Net the fold
ensemble itself): members only feed the uncertainty scores. They travel to the workers on a
copy of the audited adapter (:func:`attach`; every executor pickles the adapter), and each case
binds them to its geometry (:func:`case_members`).

Recorded: ``settings["uncertainty_source"]`` (kind, models with name and fingerprint, members
per scan and the sentence the report prints) and ``provenance["uncertainty_members"]`` (the
member fingerprints). The members' fingerprints enter the per-case cache key.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

__all__ = ["KINDS", "resolve_members", "uncertainty_source", "check_dropout", "attach",
           "case_members"]

#: ``settings["uncertainty_source"]["kind"]``
KINDS = ("augmentations", "folds", "models")
_ATTR = "uncertainty_members"


def resolve_members(spec: Any, adapter: Any) -> tuple[list[Any] | None, str]:
    """The member adapters of ``uncertainty_members=`` and their kind.

    ``None``: no members (the audited model's own test-time variants, kind ``augmentations``);
    ``"folds"``: :func:`medseg_xai.models.fold_members` of the audited nnU-Net adapter; a
    sequence of adapters: those (the audited adapter may be among them: its pass is reused).
    """
    if spec is None:
        return None, "augmentations"
    if adapter is None:
        raise ValueError("uncertainty members: expected an adapter (the audited model; members "
                         "are forward passes), got stored predictions only")
    if isinstance(spec, str):
        if spec != "folds":
            raise ValueError(f"uncertainty members: expected 'folds' (an nnU-Net model's fold "
                             f"models) or a list of adapters, got {spec!r}")
        from medseg_xai.models.members import fold_members

        return fold_members(adapter), "folds"
    if not isinstance(spec, Sequence):
        raise ValueError(f"uncertainty members: expected 'folds' or a list of adapters, got "
                         f"{type(spec).__name__}")
    members = list(spec)
    audited = [i for i, m in enumerate(members) if m is adapter]
    if audited:  # the audited model first: its own pass is the first member's plain pass
        members.insert(0, members.pop(audited[0]))
    return members, "models"


def _variants(unc: Any, spatial_dims: int) -> tuple[int, str]:
    """Members per model and their words: 'the image and 3 flipped copies'."""
    flips = len(unc.flip_sets(spatial_dims))
    parts = [f"{flips} flipped cop{'y' if flips == 1 else 'ies'}" if flips else "",
             f"{unc.jitter} intensity-jittered cop{'y' if unc.jitter == 1 else 'ies'}"
             if unc.jitter else "",
             f"{unc.mc_dropout} Monte-Carlo dropout pass{'' if unc.mc_dropout == 1 else 'es'}"
             if unc.mc_dropout else ""]
    parts = [p for p in parts if p]
    words = "the image as given" + ("" if not parts else (
        " and " + parts[0] if len(parts) == 1 else ", " + ", ".join(parts[:-1]) + " and "
        + parts[-1]))
    return 1 + flips + unc.jitter + unc.mc_dropout, words


def uncertainty_source(kind: str, members: list[Any] | None, adapter: Any,
                       unc: Any) -> dict[str, Any]:
    """``settings["uncertainty_source"]``: what the members are, with the report's sentence.

    Cost: ``n_members`` forward passes of one member per scan besides the audit's own pass,
    less one when the audited model is the first member (its pass is reused).
    """
    from medseg_xai.models.members import check_members

    spatial = int(getattr(adapter, "spatial_dims", 3))
    per, words = _variants(unc, spatial)
    models = check_members(members, adapter) if members is not None else [
        {"name": "audited model", "fingerprint": str(getattr(adapter, "fingerprint", "")),
         "audited": True}]
    n = len(models)
    if kind == "folds":
        who = f"the {n} fold models of the nnU-Net model"
    elif kind == "models":
        others = n - sum(m["audited"] for m in models)
        who = (f"{n} models (the audited model and {others} other{'s' if others != 1 else ''})"
               if others < n else f"{n} models")
    else:
        who = "the audited model"
    each = "" if per == 1 else (f", each on {words}" if n > 1 else f" on {words}")
    text = (f"disagreement between {who}{each} ({n * per} members per scan)" if n * per > 1
            else f"{who} on the image as given (1 member: no disagreement)")
    return {"kind": kind, "n_models": n, "members_per_model": per, "n_members": n * per,
            "models": models, "description": text}


def check_dropout(models: list[Any], unc: Any) -> None:
    """Before any case runs: with ``mc_dropout`` every model must have a dropout layer with
    ``p > 0`` (without one every row would fail with the same message; with only ``p = 0``
    layers, as MONAI's UNet builds by default, the samples would be identical and the
    disagreement silently 0)."""
    if not unc.mc_dropout:
        return
    from medseg_xai.explain.uncertainty import _dropout_modules
    from medseg_xai.models.members import member_name

    for i, m in enumerate(models):
        model = getattr(m, "model", None)
        drops = _dropout_modules(model) if model is not None else []
        if not any(float(getattr(d, "p", 0.0)) > 0 for d in drops):
            who = "the model" if len(models) == 1 else member_name(m, i)
            what = (f"only dropout layers with p = 0 ({len(drops)})" if drops
                    else "no dropout layer")
            raise ValueError(f"uncertainty.mc_dropout: {who} has {what} (expected "
                             "torch.nn.Dropout / Dropout2d / Dropout3d with p > 0); use flips "
                             "or an ensemble")


def attach(adapter: Any, members: list[Any] | None) -> Any:
    """A copy of ``adapter`` carrying the members to the workers (the user's object is left
    as it is); ``adapter`` itself without members. When the first member is the audited
    adapter it is not stored twice: the case's own (bound) adapter stands in for it."""
    if not members:
        return adapter
    twin = copy.copy(adapter)
    reuse = members[0] is adapter
    setattr(twin, _ATTR, (None, *members[1:]) if reuse else tuple(members))
    return twin


def case_members(adapter: Any) -> tuple[list[Any] | None, bool]:
    """The members bound to the case's geometry (that of the bound audited ``adapter``) and
    whether the first is the audited model (its pass is then reused); ``(None, True)``
    without members (the audited model's own variants)."""
    members = getattr(adapter, _ATTR, None)
    if not members:
        return None, True
    geometry = getattr(adapter, "geometry", None) or {}
    out = []
    for m in members:
        bind = getattr(m, "with_geometry", None)
        if m is None:  # the audited model, already bound to this case
            out.append(adapter)
        else:
            out.append(bind(geometry.get("spacing"), geometry.get("affine"))
                       if callable(bind) and geometry else m)
    return out, members[0] is None
