"""Small cohorts for the fault tests (shared by tests/test_faults*.py; no fixtures here)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (6, 8, 8)


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine),
             str(path))
    return path


def write_cohort(folder: Path, n: int = 4, extra: dict[str, list] | None = None) -> Path:
    """``n`` cases with stored predictions under ``folder`` and a manifest.csv (relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        lab = np.zeros(SHAPE, np.uint8)
        lab[1:4, 2:6, 2:6] = 1
        pred = lab.copy()
        pred[1 + i % 2:3] = 0
        nifti(folder / f"img{i}.nii.gz", rng.random(SHAPE).astype(np.float32))
        nifti(folder / f"lab{i}.nii.gz", lab)
        nifti(folder / f"pred{i}.nii.gz", pred)
        rows.append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz",
                     "prediction": f"pred{i}.nii.gz", "site": "AB"[i % 2]})
    df = pd.DataFrame(rows)
    for col, values in (extra or {}).items():
        df[col] = values
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


FAST = {"workers": 1, "n_resamples": 50, "min_n": 1, "progress": False}
