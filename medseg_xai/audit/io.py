"""Writing audit outputs (JSON + CSV tables) and the body of ``medseg-xai audit``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg_xai._io import write_csv
from medseg_xai.audit.result import (
    FAILURE_TABLES,
    MODEL_TABLES,
    READER_TABLES,
    TABLES,
    AuditResult,
)

__all__ = ["read_cohort", "write_outputs"]


def write_outputs(result: AuditResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``audit.json`` and one CSV per table (``cases.csv``, ``subgroups.csv``...).

    Each file is written atomically (a crash or a full disk never leaves a truncated file) and
    CSV text cells that a spreadsheet would run as formulas are neutralised
    (:func:`medseg_xai._io.write_csv`).

    Returns
    -------
    dict
        Name -> path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "audit.json"}
    result.write_json(written["json"])  # streamed: no whole text of a big audit in memory
    for name in TABLES:
        path = out / f"{name}.csv"
        write_csv(getattr(result, name), path)
        written[name] = path
    # several readers / a model / failure detection (uncertainty=, failure=) only
    for name in (*READER_TABLES, *MODEL_TABLES, *FAILURE_TABLES):
        if len(getattr(result, name)):
            path = out / f"{name}.csv"
            write_csv(getattr(result, name), path)
            written[name] = path
    return written


def read_cohort(manifest: str | Path, *, na_values: Sequence[str] | None = None,
                **cohort_kwargs: Any) -> Any:
    """Cohort from a manifest path: Decathlon ``dataset.json``, Parquet, or CSV.

    ``na_values`` (CSV only): cell texts read as missing besides the empty cell;
    ``cohort_kwargs`` (``pseudonymise``, ``salt``...) go to :class:`~medseg_xai.Cohort`.
    """
    from medseg_xai.cohort import Cohort

    p = Path(manifest)
    if p.name == "dataset.json":
        return Cohort.from_decathlon(p, **cohort_kwargs)
    if p.suffix.lower() in (".parquet", ".pq"):
        return Cohort.from_parquet(p, **cohort_kwargs)
    return Cohort.from_csv(p, na_values=na_values, **cohort_kwargs)
