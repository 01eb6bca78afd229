"""Run a segmentation adapter over a cohort manifest and write its predictions as NIfTI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medseg_xai._io import write_csv
from medseg_xai._privacy import safe_file_name
from medseg_xai.adapters import label_map
from medseg_xai.demo.cohort import save_nifti

__all__ = ["predict_cohort"]


def _resolve(value: Any, base: Path, case_id: str, column: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"manifest: case {case_id!r} has no {column!r} path (got {value!r})")
    p = Path(value)
    return p if p.is_absolute() else base / p


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes, absolute when on another drive."""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # Windows: different drives
        return str(path)


def _read_manifest(manifest: Path) -> pd.DataFrame:
    """The manifest's rows, checked: the columns needed and ids usable as file names."""
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest: no file at {manifest}")
    df = pd.read_csv(manifest, dtype={"case_id": str, "patient_id": str})
    missing = {"case_id", "image"} - set(df.columns)
    if missing:
        raise ValueError(
            f"manifest: expected columns case_id and image, {manifest} lacks {sorted(missing)}"
        )
    for cid in df["case_id"]:  # file names come from ids: refuse any that leave the folder
        safe_file_name(cid, ".nii.gz")
    return df


def _predict_case(adapter: Any, case_id: str, image_value: Any, base: Path, out: Path
                  ) -> tuple[Path, Path]:
    """Predict one case and write its label and probability maps; their paths."""
    image_path = _resolve(image_value, base, case_id, "image")
    img = nib.load(str(image_path))
    image = np.asarray(img.get_fdata(dtype=np.float32))
    with torch.no_grad():
        prob = adapter.probabilities(image)[0].cpu().numpy()
    fg = prob[1] if prob.shape[0] > 1 else prob[0]
    label = label_map(prob, None if prob.shape[0] > 1 else 0.5,
                      activation=adapter.activation)  # the toolkit's one decision rule
    pred_path = out / "predictions" / safe_file_name(case_id, ".nii.gz")
    prob_path = out / "probabilities" / safe_file_name(case_id, ".nii.gz")
    save_nifti(label.astype(np.uint8), img.affine, pred_path, "medseg-xai prediction")
    save_nifti(fg.astype(np.float32), img.affine, prob_path, "medseg-xai probability")
    return pred_path, prob_path


def predict_cohort(
    manifest: str | Path,
    adapter: Any = None,
    out_dir: str | Path | None = None,
    *,
    manifest_name: str | None = None,
    progress: bool = True,
) -> Path:
    """Predict every case of ``manifest``; write label and probability maps and a new manifest.

    For each row, the image is read (float32), passed whole through ``adapter`` and two files are
    written with the image's affine: ``predictions/<case_id>.nii.gz`` (uint8 label map, argmax
    over classes) and ``probabilities/<case_id>.nii.gz`` (float32 foreground probability, channel
    1). The returned manifest has all the input columns plus ``prediction`` and ``probability``;
    every path in it is relative to the new manifest's folder.

    Parameters
    ----------
    manifest : str or Path
        Manifest CSV with at least ``case_id`` and ``image`` (paths relative to its folder or
        absolute), e.g. from :func:`medseg_xai.demo.make_cohort`.
    adapter : SegmentationAdapter, optional
        A softmax (or sigmoid) adapter with a foreground channel 1 (or a single channel); default
        :func:`medseg_xai.demo.load_model`.
    out_dir : str or Path, optional
        Where the prediction folders and the new manifest go (default: next to ``manifest``).
    manifest_name : str, optional
        File name of the new manifest (default ``<manifest stem>_predictions.csv``).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Path
        The new manifest CSV.
    """
    manifest = Path(manifest)
    df = _read_manifest(manifest)
    if adapter is None:
        from medseg_xai.demo.model import load_model

        adapter = load_model()
    base = manifest.parent
    out = Path(out_dir) if out_dir is not None else base
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "probabilities").mkdir(parents=True, exist_ok=True)
    path_columns = [c for c in ("image", "label") if c in df.columns]

    predictions, probabilities = [], []
    rows = list(df.itertuples(index=False))
    for row in tqdm(rows, desc="predict", unit="case", disable=not progress):
        pred_path, prob_path = _predict_case(adapter, str(row.case_id), row.image, base, out)
        predictions.append(_relative(pred_path, out))
        probabilities.append(_relative(prob_path, out))

    result = df.copy()
    if out.resolve() != base.resolve():
        # Keep the input paths valid from the new manifest's folder.
        for col in path_columns:
            result[col] = [
                _relative(_resolve(v, base, str(cid), col), out)
                if isinstance(v, str) and v.strip() else v
                for v, cid in zip(df[col], df["case_id"])
            ]
    result["prediction"] = predictions
    result["probability"] = probabilities
    name = manifest_name or f"{manifest.stem}_predictions.csv"
    new_manifest = out / name
    write_csv(result, new_manifest)
    return new_manifest
