"""A real nnU-Net v2 results folder, made by nnU-Net's own planner and trainer (issue #22).

Four tiny synthetic cases (20 x 18 x 12 voxels at 1 x 1 x 2 mm, a bright box lesion), nnU-Net's
fingerprint extractor and ``ExperimentPlanner``, the 3d_fullres plans shrunk to 4-8-16 features
("tiny plans"), preprocessing by nnU-Net's ``DefaultPreprocessor``, and a network built and
checkpointed by ``nnUNetTrainer`` after a few optimiser steps on the preprocessed cases. Nothing
is downloaded. Run as a script (nnU-Net's fingerprint extraction uses a spawn pool):
``python tests/nnunet_fixture.py OUT``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

DATASET = "Dataset777_Tiny"
CONFIG = "3d_fullres"
SHAPE = (20, 18, 12)
SPACING = (1.0, 1.0, 2.0)


def write_case(folder: Path, name: str, seed: int, shape=SHAPE, spacing=SPACING,
               with_label: bool = True) -> tuple[Path, Path | None]:
    import nibabel as nib
    import numpy as np

    rng = np.random.RandomState(seed)
    img = (rng.rand(*shape) * 0.5 + 1).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    c = [int(rng.randint(s // 3, s - s // 3)) for s in shape]
    half = [max(1, round(3 * SPACING[a] / spacing[a])) for a in range(3)]
    box = tuple(slice(max(c[a] - half[a], 0), c[a] + half[a]) for a in range(3))
    lab[box] = 1
    img[lab > 0] += 1.5
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [-4.0, 2.0, 7.0]
    ip = folder / f"{name}_0000.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), ip)
    lp = None
    if with_label:
        lp = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(lab, aff), lp)
    return ip, lp


def build(root: Path, steps: int = 30) -> Path:
    """Make the results folder under ``root``; returns the trainer__plans__configuration folder."""
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_raw"] = str(root / "raw")
    os.environ["nnUNet_preprocessed"] = str(root / "preprocessed")
    os.environ["nnUNet_results"] = str(root / "results")
    raw = root / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        ip, lp = write_case(raw / "imagesTr", f"tiny_{i:03d}", i)
        shutil.move(str(lp), raw / "labelsTr" / lp.name)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": 4, "file_ending": ".nii.gz"}))

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )

    extract_fingerprints([777], num_processes=1, check_dataset_integrity=False, verbose=False)
    plan_experiments([777])
    pre = root / "preprocessed" / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    arch = plans["configurations"][CONFIG]["architecture"]["arch_kwargs"]
    n = arch["n_stages"]
    arch["features_per_stage"] = [4 * 2 ** i for i in range(n)]  # tiny plans
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))
    return _train(root, plans, json.loads((raw / "dataset.json").read_text()), steps)


def _train(root: Path, plans: dict, dataset_json: dict, steps: int) -> Path:
    import numpy as np
    import torch
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    raw = root / "raw" / DATASET
    pm = PlansManager(plans)
    cm = pm.get_configuration(CONFIG)
    pre = DefaultPreprocessor(verbose=False)
    out = root / "preprocessed" / DATASET / cm.data_identifier
    out.mkdir(parents=True, exist_ok=True)
    batch = []
    for i in range(4):
        data, seg, _ = pre.run_case([str(raw / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz")],
                                    str(raw / "labelsTr" / f"tiny_{i:03d}.nii.gz"), pm, cm,
                                    dataset_json)
        np.savez_compressed(out / f"tiny_{i:03d}.npz", data=data, seg=seg)
        pad = [(0, max(p - s, 0)) for p, s in zip(cm.patch_size, data.shape[1:])]
        crop = (slice(None), *(slice(0, p) for p in cm.patch_size))
        batch.append((np.pad(data, [(0, 0), *pad])[crop],
                      np.clip(np.pad(seg, [(0, 0), *pad])[crop], 0, None)))
    torch.manual_seed(0)
    # nnU-Net's run_training sets this key before it builds the trainer
    trainer = nnUNetTrainer({**plans, "continue_training": False}, CONFIG, 0, dataset_json,
                            device=torch.device("cpu"))
    trainer.initialize()
    trainer.set_deep_supervision_enabled(False)
    x = torch.from_numpy(np.stack([b[0] for b in batch])).float()
    y = torch.from_numpy(np.stack([b[1][0] for b in batch])).long()
    net = trainer.network
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y, weight=torch.tensor([1.0, 5.0]))
        loss.backward()
        opt.step()
    trainer.set_deep_supervision_enabled(True)
    trainer.inference_allowed_mirroring_axes = (0, 1, 2)  # what on_train_start would set
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    base = Path(trainer.output_folder).parent
    # what nnU-Net's on_train_start copies next to the folds
    shutil.copy(root / "preprocessed" / DATASET / "dataset_fingerprint.json", base)
    (base / "plans.json").write_text(json.dumps(plans))
    (base / "dataset.json").write_text(json.dumps(dataset_json))
    return base


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
