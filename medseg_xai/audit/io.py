"""Writing audit outputs (JSON + CSV tables) and the body of ``medseg-xai audit``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg_xai._io import write_csv
from medseg_xai.audit.result import MODEL_TABLES, READER_TABLES, TABLES, AuditResult

__all__ = ["read_cohort", "run_audit_cli", "write_outputs"]


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
    for name in (*READER_TABLES, *MODEL_TABLES):  # several readers / a model only
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


def run_audit_cli(
    manifest: str | Path,
    out_dir: str | Path,
    strata: Sequence[str] | None = None,
    criteria: str | Path | None = None,
    workers: int | None = None,
    dask_scheduler: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    seed: int = 0,
    html: bool = False,
    progress: bool = True,
    **audit_kwargs: Any,
) -> tuple[AuditResult, dict[str, Path]]:
    """Run an audit from a manifest file and write its outputs (what the CLI calls).

    Parameters
    ----------
    manifest : str or Path
        CSV, Parquet or Decathlon ``dataset.json``.
    out_dir : str or Path
        Output folder (``audit.json`` + CSV tables, ``report.html`` with ``html=True``).
    strata, criteria, workers, dask_scheduler, cache_dir, seed
        As in :func:`medseg_xai.audit`; ``criteria`` may be a YAML/JSON file or ``"default"``.
    html : bool
        Also write the HTML report (needs :mod:`medseg_xai.reports`).

    Returns
    -------
    result : AuditResult
    written : dict
        Paths written.
    """
    from medseg_xai.audit.engine import audit

    cohort = read_cohort(manifest)
    result = audit(cohort, strata=list(strata) if strata else None, seed=seed, criteria=criteria,
                   workers=workers, dask_scheduler=dask_scheduler, cache_dir=cache_dir,
                   progress=progress, **audit_kwargs)
    written = write_outputs(result, out_dir)
    if html:
        written["html"] = Path(result.to_html(Path(out_dir) / "report.html"))
    return result, written
