"""Render an audit result into one self-contained, autoescaped HTML file.

The Jinja2 environment escapes every value (``autoescape=True``); templates and CSS ship as package
data and the CSS is inlined; figures are PNG data URIs. Nothing in the page refers to another
file or to the network, so it opens the same on an air-gapped reviewer's laptop and prints to PDF.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from medseg_xai import __version__
from medseg_xai.reports import sections as S

__all__ = ["DEFAULT_MAX_GALLERY", "load_config", "render_html", "write_html"]

DEFAULT_MAX_GALLERY = 12
DEFAULT_MAX_EXPLANATIONS = 6


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medseg_xai.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def load_config(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """Report configuration from a dict or a YAML file (intended use, test set, approvers...)."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ValueError(
                f"config: expected a YAML file or a dict, got missing path {str(path)!r}"
            )
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"config: expected a YAML mapping in {str(path)!r}, got {type(data).__name__}"
            )
        return dict(data)
    raise ValueError(f"config: expected a dict, a YAML path or None, got {type(config).__name__}")


def _css() -> Markup:
    text = resources.files("medseg_xai.reports").joinpath("templates/report.css").read_text("utf-8")
    # Our own stylesheet, never user data: safe to inline unescaped; guard against a stray tag.
    if "</style" in text.lower():
        raise ValueError("report.css: a stylesheet must not contain '</style'")
    return Markup(text)


def render_html(
    result: Any,
    *,
    comparison: Any = None,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    adapter: Any = None,
    cohort: Any = None,
    explanations: Any = None,
    max_gallery: int = DEFAULT_MAX_GALLERY,
    max_explanations: int = DEFAULT_MAX_EXPLANATIONS,
    per_group: int = 1,
) -> str:
    """Build the report's HTML text (see :func:`write_html` for the arguments)."""
    if result is None or not hasattr(result, "cases"):
        raise ValueError(
            f"result: expected an AuditResult (with .cases, .subgroups, ...), got {type(result).__name__}"
        )
    if int(max_gallery) < 0:
        raise ValueError(f"max_gallery: expected a non-negative integer, got {max_gallery!r}")
    cfg = load_config(config)
    settings = S.mapping(result, "settings")
    subgroups = S.frame(result, "subgroups")
    cases = S.frame(result, "cases")
    min_n = int(settings.get("min_n", cfg.get("min_n", 10)) or 10)
    seed = int(settings.get("seed", 0) or 0)
    strata = S.strata_of(subgroups, settings)
    metrics = S.metrics_of(subgroups, cases, settings)
    primary = S.primary_metric(metrics, settings)
    crit = S.criteria_lookup(S.frame(result, "criteria"))
    generated = S.today()
    comp = S.section_comparison(comparison)
    toc = [
        (key, title)
        for key, title in S.SECTION_TITLES.items()
        if key != "comparison" or comp is not None
    ]
    ctx = {
        "title": cfg.get("title") or "Segmentation model audit report",
        "version": __version__,
        "generated": generated,
        "toc": toc,
        "titles": S.SECTION_TITLES,
        "css": _css(),
        "primary": primary,
        "identification": S.section_identification(result, cfg, adapter, generated),
        "provenance": S.section_provenance(result, cfg, strata),
        "sap": S.section_sap(result, metrics, min_n),
        "overall": S.section_overall(result, metrics, crit),
        "subgroups": S.section_subgroups(result, strata, metrics, crit, min_n, seed),
        "lesions": S.section_lesions(result),
        "failures": S.section_failures(
            result,
            strata,
            primary,
            cohort=cohort,
            adapter=adapter,
            explanations=explanations,
            max_gallery=int(max_gallery),
            max_explanations=int(max_explanations),
            per_group=int(per_group),
        ),
        "comparison": comp,
        "limitations": S.section_limitations(result, cfg, min_n, strata),
        "repro": S.section_reproducibility(result, cfg, adapter),
    }
    return _environment().get_template("report.html.j2").render(**ctx)


def write_html(
    result: Any,
    path: str | os.PathLike,
    *,
    comparison: Any = None,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    adapter: Any = None,
    cohort: Any = None,
    explanations: Any = None,
    max_gallery: int = DEFAULT_MAX_GALLERY,
    max_explanations: int = DEFAULT_MAX_EXPLANATIONS,
    per_group: int = 1,
) -> Path:
    """Write the regulatory audit report as one self-contained HTML file.

    Parameters
    ----------
    result : AuditResult
        From :func:`medseg_xai.audit`.
    path : str or path-like
        Output file (parent folders are created).
    comparison : ComparisonResult, optional
        From :func:`medseg_xai.audit.compare`; adds section 8.
    config : dict or path to YAML, optional
        ``model_name``, ``model_version``, ``intended_use``, ``intended_users``,
        ``reference_standard``, ``test_set`` (how it was drawn), ``exclusions``,
        ``limitations`` (text or list), ``approvers`` (list of ``{role, name}``), ``title``.
    adapter : SegmentationAdapter, optional
        Enables Grad-CAM views of missed lesions in the failure gallery (needs ``cohort``).
    cohort : Cohort, optional
        Loads images for the failure gallery overlays.
    explanations : mapping or list, optional
        Precomputed explanations: ``{case_id: Explanation}``, ``{(case_id, lesion_id): ...}`` or
        dicts with ``case_id``, ``attribution`` and optional ``lesion_id``, ``mask``, ``image``,
        ``method``, ``localisation``.
    max_gallery : int
        At most this many cases in the failure gallery (keeps the file small).
    max_explanations : int
        At most this many missed lesions explained.
    per_group : int
        Worst cases taken from each subgroup.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    html = render_html(
        result,
        comparison=comparison,
        config=config,
        adapter=adapter,
        cohort=cohort,
        explanations=explanations,
        max_gallery=max_gallery,
        max_explanations=max_explanations,
        per_group=per_group,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from medseg_xai._io import atomic_write  # never a truncated report

    atomic_write(out, html)
    return out
