"""Ensemble members for per-case uncertainty (issue 27): the fold models of a loaded nnU-Net
adapter, or several adapters the user trained.

A *member* is a :class:`~medseg_xai.adapters.SegmentationAdapter` whose probabilities are one
opinion on the case. :func:`fold_members` splits an nnU-Net adapter into one adapter per fold,
each sharing the loaded networks, plans and state dicts (nothing is read from disk again) and
predicting exactly what nnU-Net predicts with that fold alone (its mirroring included).
:func:`check_members` validates a list before any case runs: same activation and task, and
names each member with its fingerprint for the audit's provenance.

The audit's own prediction (the case metrics) stays that of the adapter the user passed: for
nnU-Net the fold ensemble, which averages the folds' *logits* -- ``softmax`` of the mean of the
members' log-probabilities equals it (tested); the arithmetic mean of the members'
probabilities, which the uncertainty maps use, is close to it but not equal.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

__all__ = ["fold_members", "check_members", "member_name"]


def _nnunet_pipeline(adapter: Any) -> Any:
    from medseg_xai.models.nnunet import NnUNetPipeline

    model = getattr(adapter, "model", None)
    return model if isinstance(model, NnUNetPipeline) else None


def fold_members(adapter: Any) -> list[Any]:
    """One adapter per fold of a loaded nnU-Net adapter (``mx.load_model`` of a results folder
    or exported zip).

    Parameters
    ----------
    adapter : SegmentationAdapter
        An nnU-Net adapter with at least two folds.

    Returns
    -------
    list of SegmentationAdapter
        In the adapter's fold order; each has ``info["folds"] == [fold]``, ``member_name``
        ``"fold k"`` and the fingerprint of its checkpoint file (what loading that fold alone
        gives).

    Raises
    ------
    ValueError
        A model that is not nnU-Net's, or one with a single fold, naming what was expected.
    """
    pipe = _nnunet_pipeline(adapter)
    if pipe is None:
        fmt = (getattr(adapter, "info", None) or {}).get("format", type(adapter).__name__)
        raise ValueError(f"uncertainty members 'folds': expected an nnU-Net model (a results "
                         f"folder or exported zip loaded by mx.load_model), got a {fmt} model; "
                         "pass several models as members instead")
    if len(pipe.networks) < 2:
        raise ValueError(f"uncertainty members 'folds': expected an nnU-Net model with at least "
                         f"2 folds, got {len(pipe.networks)} (fold "
                         f"{', '.join(pipe.fold_names)}); train more folds or pass several "
                         "models as members")
    out = []
    for fold_pipe in pipe.fold_pipelines():
        twin = copy.copy(adapter)
        twin.model = fold_pipe
        twin._default_layers = {}
        twin.info = {**(getattr(adapter, "info", None) or {}), "folds": list(fold_pipe.fold_names)}
        twin.member_name = f"fold {fold_pipe.fold_names[0]}"
        out.append(twin)
    return out


def member_name(adapter: Any, index: int) -> str:
    """``member_name`` of a fold member, else ``"model k"`` (1-based)."""
    return str(getattr(adapter, "member_name", None) or f"model {index + 1}")


def check_members(members: Sequence[Any], adapter: Any) -> list[dict[str, Any]]:
    """Validate ensemble members against the audited adapter before any case runs.

    Returns one ``{"name", "fingerprint", "audited"}`` entry per member (``audited``: the
    member is the audited adapter itself, whose pass is then reused).

    Raises
    ------
    ValueError
        Fewer than two members, a member that is not an adapter, or an activation or a number
        of classes (when both are named) other than the audited model's.
    """
    members = list(members)
    if len(members) < 2:
        raise ValueError(f"uncertainty members: expected at least 2 models (an ensemble), got "
                         f"{len(members)}")
    act = str(getattr(adapter, "activation", "softmax"))
    classes = getattr(adapter, "class_names", None)
    out = []
    for i, m in enumerate(members):
        if not callable(getattr(m, "probabilities", None)):
            raise ValueError(f"uncertainty members: member {i + 1} is a {type(m).__name__}; "
                             "expected a SegmentationAdapter (mx.load_model(...))")
        got = str(getattr(m, "activation", "softmax"))
        if got != act:
            raise ValueError(f"uncertainty members: {member_name(m, i)} has activation {got!r}; "
                             f"expected the audited model's {act!r}")
        got_classes = getattr(m, "class_names", None)
        if classes and got_classes and len(got_classes) != len(classes):
            raise ValueError(f"uncertainty members: {member_name(m, i)} has {len(got_classes)} "
                             f"output classes ({', '.join(map(str, got_classes))}); expected "
                             f"the audited model's {len(classes)}")
        out.append({"name": member_name(m, i), "fingerprint": str(getattr(m, "fingerprint", "")),
                    "audited": m is adapter})
    return out
