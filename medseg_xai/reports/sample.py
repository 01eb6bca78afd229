"""A synthetic audit result of any size, for report benchmarks, previews and tests.

It has the shape of :class:`medseg_xai.audit.AuditResult` (``cases``, ``subgroups``, ``lesions``,
``criteria``, ``settings``, ``provenance``, ``to_json``) but no images: rendering a report for a
1,000-case audit needs the tables, not the scans. Numbers are drawn from a seeded generator;
the subgroup statistics are simple normal-approximation summaries, not the audit's bootstrap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SyntheticResult", "synthetic_result"]


@dataclass
class SyntheticResult:
    """Tables shaped like an ``AuditResult``."""

    cases: pd.DataFrame
    subgroups: pd.DataFrame
    lesions: pd.DataFrame
    criteria: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            # Exact floats (shortest repr, as the audit writes them); NaN -> None.
            out = []
            for rec in df.to_dict("records"):
                out.append({k: _plain(v) for k, v in rec.items()})
            return out

        return {
            "settings": self.settings,
            "provenance": self.provenance,
            "cases": records(self.cases),
            "subgroups": records(self.subgroups),
            "lesions": records(self.lesions),
            "criteria": records(self.criteria),
        }

    def to_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")
        return out


_METRICS = ("dice", "hd95", "nsd")


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def synthetic_result(
    n_cases: int = 200,
    *,
    seed: int = 0,
    n_failed: int = 3,
    sites: tuple[str, ...] = ("site-A", "site-B", "site-C"),
    devices: tuple[str, ...] = ("GE", "Siemens", "Philips", "Canon"),
    lesions: bool = True,
    min_n: int = 10,
) -> SyntheticResult:
    """Build a synthetic result with ``n_cases`` manifest rows, ``n_failed`` of them failed."""
    if n_cases < 1 or not 0 <= n_failed <= n_cases:
        raise ValueError(
            f"n_cases, n_failed: expected n_cases >= 1 and 0 <= n_failed <= n_cases, "
            f"got {n_cases}, {n_failed}"
        )
    rng = np.random.default_rng(seed)
    site = rng.choice(sites, n_cases)
    device = rng.choice(devices, n_cases, p=_probs(len(devices)))
    group = rng.choice(["adult", "paediatric"], n_cases, p=[0.85, 0.15])
    ref_vol = np.where(rng.random(n_cases) < 0.12, 0.0, rng.lognormal(6, 1.2, n_cases))
    penalty = np.where(device == devices[-1], 0.12, 0.0)
    dice = np.clip(rng.beta(8, 2, n_cases) - penalty, 0, 1)
    pred_vol = ref_vol * rng.normal(1.0, 0.15, n_cases) + np.where(rng.random(n_cases) < 0.1, 80, 0)
    pred_vol = np.clip(pred_vol, 0, None)
    edge = np.where(ref_vol == 0, np.where(pred_vol > 0, "ref_empty", "both_empty"), "none")
    dice = np.where(edge == "both_empty", 1.0, np.where(edge == "ref_empty", 0.0, dice))
    cases = pd.DataFrame(
        {
            "case_id": [f"case-{i:04d}" for i in range(n_cases)],
            "patient_id": [f"PAT{i // 2:05d}" for i in range(n_cases)],
            "site": site,
            "device": device,
            "patient_group": group,
            "lesion_size": pd.cut(
                ref_vol, [-1, 0, 250, 1000, np.inf], labels=["empty", "small", "medium", "large"]
            ).astype(str),
            "status": "ok",
            "error": "",
            "dice": dice,
            "hd95": np.abs(rng.normal(4, 3, n_cases)) + 20 * (1 - dice),
            "nsd": np.clip(dice + rng.normal(0.02, 0.05, n_cases), 0, 1),
            "volume_ref_mm3": ref_vol,
            "volume_pred_mm3": pred_vol,
            "edge_case": edge,
        }
    )
    failed = rng.choice(n_cases, n_failed, replace=False)
    for col in ("dice", "hd95", "nsd", "volume_ref_mm3", "volume_pred_mm3"):
        cases.loc[failed, col] = np.nan
    cases.loc[failed, "edge_case"] = None
    cases.loc[failed, "status"] = "failed"
    cases.loc[failed, "error"] = (
        "ValueError: prediction shape (47, 64, 64) != label shape (48, 64, 64)"
    )
    ok = cases[cases["status"] == "ok"]
    strata = ["site", "device", "patient_group"]
    rows = []
    for metric in _METRICS:
        rows.append(_summary("overall", "all", metric, ok[metric], None, min_n))
    for stratum in strata:
        for g, grp in ok.groupby(stratum, sort=True):
            rest = ok.loc[ok[stratum] != g]
            for metric in _METRICS:
                rows.append(_summary(stratum, str(g), metric, grp[metric], rest[metric], min_n))
    subgroups = pd.DataFrame(rows)
    m = subgroups["p_value"].notna()
    subgroups.loc[m, "p_adjusted"] = np.minimum(subgroups.loc[m, "p_value"] * m.sum(), 1.0)
    sig = (subgroups["p_adjusted"] < 0.05) & subgroups["p_adjusted"].notna()
    worse = np.sign(subgroups["gap"]) * np.where(subgroups["metric"] == "hd95", -1, 1) < 0
    subgroups["flag"] = np.where(
        subgroups["n"] < min_n,
        "insufficient data",
        np.where(sig, np.where(worse, "worse", "better"), "ok"),
    )
    crit = []
    for rec in subgroups.to_dict("records"):
        if rec["metric"] != "dice":
            continue
        status = (
            "INSUFFICIENT DATA" if rec["n"] < min_n else "PASS" if rec["ci_low"] >= 0.7 else "FAIL"
        )
        crit.append(
            {
                "criterion": "mean Dice lower 95% CI >= 0.70",
                "stratum": rec["stratum"],
                "group": rec["group"],
                "metric": "dice",
                "value": rec["ci_low"],
                "threshold": 0.7,
                "status": status,
            }
        )
    les = (
        _lesions(ok, rng)
        if lesions
        else pd.DataFrame(columns=["case_id", "lesion_id", "source", "status", "volume_mm3"])
    )
    return SyntheticResult(
        cases=cases,
        subgroups=subgroups,
        lesions=les,
        criteria=pd.DataFrame(crit),
        settings={
            "strata": strata,
            "seed": seed,
            "ci_method": "BCa",
            "alpha": 0.05,
            "correction": "holm",
            "min_n": min_n,
            "empty": "worst",
            "percentile": 95,
            "tolerance": 1.0,
            "n_resamples": 2000,
            "metrics": list(_METRICS),
        },
        provenance={
            "manifest_sha256": "0" * 64,
            "created": "2024-01-01T00:00:00Z",
            "versions": {"medseg-xai": "0.1.0"},
            "command": "medseg-xai audit m.csv",
        },
    )


def _probs(k: int) -> list[float]:
    p = np.ones(k)
    p[-1] = 0.4  # a rarer device so one subgroup is small
    return list(p / p.sum())


def _summary(
    stratum: str, group: str, metric: str, v: pd.Series, rest: pd.Series | None, min_n: int
) -> dict[str, Any]:
    x = v.dropna().to_numpy(dtype=float)
    n = int(x.size)
    est = float(x.mean()) if n else float("nan")
    se = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    row = {
        "stratum": stratum,
        "group": group,
        "n": n,
        "metric": metric,
        "estimate": est,
        "median": float(np.median(x)) if n else float("nan"),
        "ci_low": est - 1.96 * se,
        "ci_high": est + 1.96 * se,
        "gap": float("nan"),
        "gap_ci_low": float("nan"),
        "gap_ci_high": float("nan"),
        "p_value": float("nan"),
        "p_adjusted": float("nan"),
    }
    if rest is not None and n >= 2:
        y = rest.dropna().to_numpy(dtype=float)
        if y.size > 1:
            from scipy import stats

            gap = est - float(y.mean())
            se_gap = float(np.sqrt(x.var(ddof=1) / n + y.var(ddof=1) / y.size))
            row.update(
                gap=gap,
                gap_ci_low=gap - 1.96 * se_gap,
                gap_ci_high=gap + 1.96 * se_gap,
                p_value=float(stats.ttest_ind(x, y, equal_var=False).pvalue),
            )
    return row


def _lesions(ok: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for rec in ok.to_dict("records"):
        n_ref = 0 if rec["volume_ref_mm3"] == 0 else int(rng.integers(1, 4))
        for k in range(1, n_ref + 1):
            vol = float(rng.lognormal(5, 1.3))
            detected = rng.random() < min(0.97, 0.4 + 0.12 * np.log1p(vol))
            rows.append(
                {
                    "case_id": rec["case_id"],
                    "lesion_id": f"ref-{k}",
                    "source": "reference",
                    "status": "detected" if detected else "missed",
                    "volume_mm3": vol,
                    "site": rec["site"],
                    "device": rec["device"],
                }
            )
        if rng.random() < 0.15:
            rows.append(
                {
                    "case_id": rec["case_id"],
                    "lesion_id": "pred-1",
                    "source": "prediction",
                    "status": "false_positive",
                    "volume_mm3": float(rng.lognormal(3, 1)),
                    "site": rec["site"],
                    "device": rec["device"],
                }
            )
    return pd.DataFrame(rows)
