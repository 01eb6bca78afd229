"""Keep file-system paths out of shared outputs (audit results, JSON, HTML reports).

Hospital folders often carry patient names or record numbers (``/data/DOE^JOHN/ct.nii.gz``), so
any text that leaves the machine in a result or a report shows a path as its file name only. The
case id and the field (image, label, ...) in the same message already say which manifest cell it
is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["redact_paths"]

# An absolute POSIX path of two or more components, a Windows drive path or a UNC path, up to
# white space or a quote. It must start the text or follow white space, a quote, a bracket or
# one of "=,:;", so "and/or", "1/2", "</script>" or "mm /s" stay intact.
_ABSOLUTE_PATH = re.compile(
    r"""(?<![^\s'"`(\[=,:;])(?:[A-Za-z]:[\\/]|\\\\|/[^\s'"`<>|/]+/)[^\s'"`<>|]*"""
)


def _name(path: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", path.rstrip("\\/")) if p]
    return parts[-1] if parts else path


def redact_paths(text: str, known: Iterable[str | None] = ()) -> str:
    """Replace every absolute path in ``text`` by its last component (the file or folder name).

    Parameters
    ----------
    text : str
        A message that may hold paths (error texts, a command line).
    known : iterable of str or None
        Paths known to appear (a case's image / label / prediction paths); replaced first and
        whole, so a path with spaces is reduced correctly too.

    Returns
    -------
    str
        The text with no directory names left; relative paths and other text are unchanged.
    """
    out = str(text)
    for path in sorted({str(p) for p in known if p}, key=len, reverse=True):
        if len(path) > 1 and path in out:
            out = out.replace(path, _name(path))
    return _ABSOLUTE_PATH.sub(lambda m: _name(m.group(0)), out)
