"""Train the bundled demo model: ``python -m medseg_xai.demo.train [--out DIR] [--steps N]``.

The training cohort is drawn in memory with its own seed and without the unseen device
(:data:`medseg_xai.demo.scanners.UNSEEN_DEVICE`), so an audit of the model finds a device gap.
Training feeds whole raw scans (mostly scans with lesions, two of one device grid per step, random
left-right flips) through the whole model with Dice + cross-entropy loss, AdamW and a one-cycle
learning-rate schedule. There is no intensity augmentation on purpose: a global scale or shift is
a no-op after the model's per-scan z-score, and contrast, noise or bias-field augmentation would
teach the model the unseen device and erase the device gap the demo audit is meant to find. A
validation cohort with another seed and every device scores the result. The state_dict and a JSON
record (seed, data recipe, architecture, steps, time, validation Dice overall, per device and per
lesion size) are written next to each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from medseg_xai.demo.cohort import DemoCase, generate_cases
from medseg_xai.demo.evaluation import SIZE_BINS, case_dice, lesion_rows
from medseg_xai.demo.model import (
    ARCHITECTURE,
    RECORD_FILE,
    WEIGHTS_FILE,
    DemoSegmenter,
    _weights_dir,
    build_model,
)
from medseg_xai.demo.scanners import DEVICES, UNSEEN_DEVICE

__all__ = ["TrainConfig", "evaluate_model", "main", "train"]


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (recorded next to them)."""

    seed: int = 1000
    n_train: int = 192
    val_seed: int = 2000
    n_val: int = 48
    shape: tuple[int, int, int] = (48, 64, 64)
    exclude_devices: tuple[str, ...] = (UNSEEN_DEVICE,)
    batch_size: int = 2
    steps: int = 2600
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    lesion_scan_fraction: float = 0.8
    threads: int = 1  # one thread is several times faster than two on a shared 2-core box
    extra: dict[str, Any] = field(default_factory=dict)


def _batch(cases: list[DemoCase], cfg: TrainConfig,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole scans of one device grid (equal shapes), mostly scans with lesions."""
    with_lesion = [c for c in cases if c.label.any()]
    pool = with_lesion if with_lesion and rng.random() < cfg.lesion_scan_fraction else cases
    first = pool[int(rng.integers(len(pool)))]
    same = [c for c in cases if c.image.shape == first.image.shape]
    chosen = [first] + [same[int(rng.integers(len(same)))] for _ in range(cfg.batch_size - 1)]
    images = np.stack([c.image for c in chosen])[:, None]
    labels = np.stack([c.label for c in chosen])[:, None]
    if rng.random() < 0.5:  # left-right flip: heads are roughly symmetric
        images, labels = images[..., ::-1], labels[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return x, y


@torch.no_grad()
def evaluate_model(model: DemoSegmenter, cases: list[DemoCase]) -> dict[str, Any]:
    """Validation Dice of ``model`` on ``cases``: overall, per device, seen/unseen, per lesion size.

    Case Dice counts an empty reference with an empty prediction as 1. Lesion rows use the
    26-connected reference components; ``detection`` is the share with >= 10 % of their voxels
    predicted.
    """
    model.eval()
    per_case = []
    lesions = []
    for case in cases:
        logits = model(torch.from_numpy(case.image)[None, None])
        pred = logits.argmax(1)[0].numpy()
        per_case.append({"device": case.device.name, "site": case.site.name,
                         "has_lesion": bool(case.label.any()),
                         "dice": case_dice(pred, case.label)})
        for row in lesion_rows(pred, case.label, case.spacing):
            lesions.append({**row, "device": case.device.name})

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    def dice_of(rows: list[dict]) -> dict[str, Any]:
        with_lesion = [r["dice"] for r in rows if r["has_lesion"]]
        return {"n": len(rows), "dice": mean([r["dice"] for r in rows]),
                "n_with_lesion": len(with_lesion), "dice_with_lesion": mean(with_lesion)}

    seen = [r for r in per_case if r["device"] != UNSEEN_DEVICE]
    unseen = [r for r in per_case if r["device"] == UNSEEN_DEVICE]
    by_size = {}
    for name, _, _ in SIZE_BINS:
        for group, rows in (("seen", [r for r in lesions if r["device"] != UNSEEN_DEVICE]),
                            ("unseen", [r for r in lesions if r["device"] == UNSEEN_DEVICE])):
            sel = [r for r in rows if r["size_bin"] == name]
            by_size.setdefault(name, {})[group] = {
                "n_lesions": len(sel),
                "detection": mean([float(r["detected"]) for r in sel]),
                "lesion_dice": mean([r["dice"] for r in sel]),
            }
    return {
        "overall": dice_of(per_case),
        "seen_devices": dice_of(seen),
        "unseen_device": dice_of(unseen),
        "per_device": {d: dice_of([r for r in per_case if r["device"] == d])
                       for d in sorted(DEVICES)},
        "per_lesion_size": by_size,
    }


def train(cfg: TrainConfig, progress: bool = True) -> tuple[DemoSegmenter, dict[str, Any]]:
    """Train a :class:`DemoSegmenter` as ``cfg`` says; return it and its training record."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    cases = list(generate_cases(cfg.n_train, cfg.seed, cfg.shape,
                                exclude_devices=cfg.exclude_devices))
    t_data = time.perf_counter() - t0
    model = build_model(cfg.seed)
    model.train()
    # Cross-entropy at half weight: at full weight it keeps the model conservative on lesions.
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate,
                                                total_steps=cfg.steps, pct_start=0.15)
    losses = []
    t1 = time.perf_counter()
    for step in range(cfg.steps):
        # Whole raw scans through the whole model: exactly the inference path, so the
        # normalisation and instance-norm statistics match those at inference.
        x, y = _batch(cases, cfg, rng)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 50 == 0:
            print(f"step {step + 1}/{cfg.steps}  loss {np.mean(losses[-50:]):.4f}  "
                  f"{time.perf_counter() - t1:.0f}s", flush=True)
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    val_cases = list(generate_cases(cfg.n_val, cfg.val_seed, cfg.shape))
    validation = evaluate_model(model, val_cases)
    t_val = time.perf_counter() - t2
    record = {
        "model": "DemoSegmenter (ScanNormalise + MONAI UNet)",
        "architecture": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in ARCHITECTURE.items()},
        "optimizer": "torch.optim.AdamW + OneCycleLR (pct_start=0.15)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "data_recipe": {
            "generator": "medseg_xai.demo.cohort.generate_cases",
            "train": {"n_cases": cfg.n_train, "seed": cfg.seed,
                      "exclude_devices": list(cfg.exclude_devices),
                      "devices": sorted({c.device.name for c in cases}),
                      "n_lesion_voxels": int(sum(int(c.label.sum()) for c in cases))},
            "validation": {"n_cases": cfg.n_val, "seed": cfg.val_seed, "devices": "all"},
        },
        "loss": "monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.5)",
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "time_s": {"data": round(t_data, 1), "train": round(t_train, 1),
                   "validation": round(t_val, 1)},
        "validation": validation,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": cfg.threads},
    }
    return model, record


def save(model: DemoSegmenter, record: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write the state_dict and the JSON record into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    torch.save(model.state_dict(), weights)
    record = {**record, "weights_bytes": weights.stat().st_size}
    path = out_dir / RECORD_FILE
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return weights, path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m medseg_xai.demo.train``)."""
    parser = argparse.ArgumentParser(prog="python -m medseg_xai.demo.train",
                                     description="Train the bundled medseg-xai demo model.")
    parser.add_argument("--out", type=Path, default=_weights_dir(),
                        help="output folder (default: the package's demo/weights)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--n-train", type=int, default=TrainConfig.n_train)
    args = parser.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, seed=args.seed, n_train=args.n_train)
    model, record = train(cfg)
    weights, path = save(model, record, args.out)
    print(json.dumps(record["validation"], indent=2, ensure_ascii=False))
    print(f"wrote {weights} ({weights.stat().st_size} bytes) and {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
