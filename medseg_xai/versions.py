"""Installed library versions: the one function audits, explanations and reports record."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

__all__ = ["DEFAULT_PACKAGES", "library_versions"]

#: Packages whose versions an audit records (numbers can change with any of them).
DEFAULT_PACKAGES = ("medseg-xai", "numpy", "scipy", "pandas", "monai", "torch", "nibabel",
                    "captum", "matplotlib", "jinja2")


def library_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Python's version and each package's installed version (``"not installed"`` if absent).

    Reads package metadata only: nothing is imported, so it stays cheap.
    """
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
