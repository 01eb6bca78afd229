"""Render an :class:`~medseg_xai.audit.AuditResult` into one self-contained HTML file (and PDF).

The page is the sections of :data:`medseg_xai.reports.registry.SECTIONS` in order, each built by
its module's ``build(result, config)`` from the result alone and drawn by its template. The Jinja2
environment escapes every value (``autoescape=True``); templates and CSS ship as package data
and the CSS is inlined; figures are PNG data URIs. Nothing in the page refers to another file or
the network, so it opens the same on an air-gapped laptop and prints to PDF with page numbers.

Apart from one line (``#provenance-line``: when and by which version it was rendered) the HTML is
a function of the result and the config: re-rendering ``audit.json`` gives the same page.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from medseg_xai import __version__
from medseg_xai.reports.registry import MAJOR_PARTS, SECTIONS

__all__ = ["find_chromium", "load_config", "render_html", "sections", "write_html", "write_pdf"]

#: Browser flags for printing (as the browser tests use them), plus no URL/date header.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-pdf-header-footer")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("medseg_xai.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def load_config(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """Report configuration from a dict or a YAML file (keys: README, "REPORT.yaml").

    A file is read with the limits of :mod:`medseg_xai._yaml` (size, aliases, depth, repeated
    keys) and may not set provenance keys (``command_line``...: the program writes those); both
    a file and a dict are checked against the schema of :mod:`medseg_xai._config` (types per
    key), so a wrong type stops here naming the key instead of rendering as garbage.
    """
    from medseg_xai._config import check_report_config

    if config is None:
        return {}
    if isinstance(config, Mapping):
        return check_report_config(config, "config", from_file=False)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config: expected a YAML file or a dict, got missing path {str(path)!r}")
        from medseg_xai._yaml import load_yaml_file

        data = load_yaml_file(path, "config") or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"config: expected a YAML mapping in {str(path)!r}, got "
                             f"{type(data).__name__}")
        return check_report_config(data, f"config {path.name!r}", from_file=True)
    raise ValueError(f"config: expected a dict, a YAML path or None, got {type(config).__name__}")


def _css() -> Markup:
    text = resources.files("medseg_xai.reports").joinpath("templates/report.css").read_text("utf-8")
    # Our own stylesheet, never user data: safe to inline unescaped; guard against a stray tag.
    if "</style" in text.lower():
        raise ValueError("report.css: a stylesheet must not contain '</style'")
    return Markup(text)


def sections(result: Any, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The shown sections in order: ``name, num, title, anchor, data`` (numbers without holes)."""
    out = []
    for name in SECTIONS:
        mod = importlib.import_module(f"medseg_xai.reports.sec_{name}")
        data = mod.build(result, dict(config))
        if data is None:
            continue
        out.append({"name": name, "num": len(out) + 1, "title": mod.TITLE,
                    "anchor": name.replace("_", "-"), "data": data,
                    "major": name in MAJOR_PARTS})
    numbers = {sec["name"]: sec["num"] for sec in out}
    for sec in out:
        if sec["name"] == "traceability":  # maps guidance items to the sections shown
            from medseg_xai.reports.sec_traceability import resolve

            resolve(sec["data"], numbers)
    return out


def _check_result(result: Any) -> None:
    # checked by what a report reads, not by class: importing AuditResult here would close the
    # cycle result -> reports -> render -> result
    if not all(hasattr(result, a) for a in ("settings", "cases", "subgroups", "provenance")):
        raise ValueError(f"result: expected an AuditResult, got {type(result).__name__}")


def render_html(result: Any, *, config: Mapping[str, Any] | str | os.PathLike | None = None,
                comparison: Any = None) -> str:
    """The report's HTML text (see :func:`write_html`)."""
    _check_result(result)
    from medseg_xai._config import check_report_config

    stored = check_report_config(result.report or {}, "audit.json: report", from_file=False)
    cfg = {**stored, **load_config(config), "comparison": comparison}
    shown = sections(result, cfg)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = str(cfg.get("title") or "Segmentation model audit report")
    return _environment().get_template("report.html.j2").render(
        title=title, version=__version__, generated=generated, css=_css(), sections=shown,
        verdict=result.verdict, footer=_footer_css(result, cfg, title))


def _css_string(text: str, limit: int) -> str:
    """``text`` as the body of a CSS string: one line, at most ``limit`` characters, no quote,
    backslash or tag that could end the string or the style element."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "".join(c if c.isalnum() or c in " .,:;()-_+/#'·…" else " " for c in text)


def _footer_css(result: Any, cfg: Mapping[str, Any], title: str) -> Markup:
    """The printed footer: title, model and version, audit id and page numbers on every page
    (CSS page-margin boxes; Chromium >= 131 and WeasyPrint draw them)."""
    model = " ".join(str(cfg.get(k)) for k in ("model_name", "model_version") if cfg.get(k))
    left = _css_string(f"{title} · model: {model or 'not named'}", 110)
    right = _css_string(f"audit {result.audit_id} · medseg-xai {__version__} · page ", 80)
    return Markup(
        "@page { @bottom-left { content: \"" + left + "\"; font-size: 8pt; color: #555; }\n"
        "  @bottom-right { content: \"" + right + "\" counter(page) \" of \" counter(pages); "
        "font-size: 8pt; color: #555; } }")


def write_html(result: Any, path: str | os.PathLike, *,
               config: Mapping[str, Any] | str | os.PathLike | None = None,
               comparison: Any = None, pdf: bool | str | os.PathLike = False) -> Path:
    """Write the regulatory audit report as one self-contained HTML file.

    Parameters
    ----------
    result : AuditResult
        From :func:`medseg_xai.audit`; everything shown comes from it (failure gallery:
        ``result.explanations``, see :func:`medseg_xai.audit.explanations.explain_failures`).
    path : str or path-like
        Output file (parent folders are created).
    config : dict or path to YAML, optional
        Merged over ``result.report`` (the configuration the audit stored). Keys in the README
        ("REPORT.yaml").
    comparison : ComparisonResult, optional
        From :func:`medseg_xai.audit.compare`; adds the model comparison section.
    pdf : bool or path, optional
        Also print a PDF (``True``: next to the HTML) with :func:`write_pdf`.

    Returns
    -------
    pathlib.Path
        The HTML file.
    """
    html = render_html(result, config=config, comparison=comparison)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from medseg_xai._io import atomic_write  # never a truncated report

    atomic_write(out, html)
    if pdf:
        write_pdf(out, out.with_suffix(".pdf") if pdf is True else Path(pdf))
    return out


def find_chromium() -> str | None:
    """A Chromium / Chrome executable (``MEDSEG_XAI_CHROMIUM`` first), or None."""
    env = os.environ.get("MEDSEG_XAI_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_pdf(html_path: str | os.PathLike, pdf_path: str | os.PathLike, *,
              timeout: float = 180.0) -> Path:
    """Print a report to PDF: headless Chromium where installed, else WeasyPrint.

    The print stylesheet gives A4 pages, a footer naming the report, model, audit id and page
    ("page N of M"); sections flow, with a page break only before the major parts
    (``registry.MAJOR_PARTS``); the table of contents links to the sections.

    Raises
    ------
    ValueError
        The HTML file does not exist.
    RuntimeError
        Neither Chromium nor WeasyPrint (``pip install medseg-xai[pdf]``) is available, or the
        printer failed (its message included).
    """
    src = Path(html_path).resolve()
    if not src.is_file():
        raise ValueError(f"html_path: expected an existing HTML report, got {str(html_path)!r}")
    dst = Path(pdf_path).resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    browser = find_chromium()
    if browser is not None:
        with tempfile.TemporaryDirectory(prefix="medseg-xai-chromium-") as profile:
            cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--print-to-pdf={tmp}", src.as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"write_pdf: Chromium failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-500:]}")
    else:
        try:
            import weasyprint
        except ImportError as err:
            raise RuntimeError("write_pdf: expected headless Chromium (set MEDSEG_XAI_CHROMIUM) "
                               "or WeasyPrint (pip install 'medseg-xai[pdf]'), found neither"
                               ) from err
        weasyprint.HTML(filename=str(src)).write_pdf(str(tmp))
    os.replace(tmp, dst)
    return dst
