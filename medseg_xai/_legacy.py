"""Old keywords mapped into a settings object, with a FutureWarning naming the new spelling.

DESIGN.md: settings live in objects, and no public function takes more than 12 parameters. A
function that moved keywords into a frozen settings dataclass (``explain_miss`` ->
:class:`~medseg_xai.explain.miss_settings.MissSettings`, ``viz.show_slice`` ->
:class:`~medseg_xai.viz.SliceStyle`, ...) takes ``**legacy`` for one release and calls
:func:`apply_legacy`: each old keyword must be a field of the settings class (anything else is a
``TypeError`` naming it, as Python says for any unexpected keyword), warns once per call with
the replacement spelled out, and lands in the settings object it names.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _outside_level() -> int:
    """``stacklevel`` of the first frame outside this package (and ``contextlib``), so the
    warning names the user's line, however many of the package's frames lie between."""
    level, frame = 2, sys._getframe(2)  # level 2 = the caller of apply_legacy's caller
    while frame is not None and (frame.f_globals.get("__name__", "").startswith("medseg_xai")
                                 or frame.f_code.co_filename.endswith("contextlib.py")):
        frame, level = frame.f_back, level + 1
    return level


def as_settings(cls: type[T], value: Any, name: str) -> T:
    """``value`` as a ``cls``: None -> the defaults, a mapping -> ``cls(**mapping)``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - fields)
        if unknown:
            raise TypeError(f"{name}: unknown {cls.__name__} field(s) {unknown}; expected "
                            f"names from {sorted(fields)}")
        return cls(**value)
    raise TypeError(f"{name}: expected a {cls.__name__}, a mapping of its fields or None, "
                    f"got {type(value).__name__}")


def apply_legacy(func: str, cls: type[T], settings: Any, legacy: Mapping[str, Any],
                 param: str = "settings") -> T:
    """``settings`` (a ``cls``, a mapping or None) with the old keywords ``legacy`` applied.

    Parameters
    ----------
    func : str
        The public name, for messages (``"explain_miss"``).
    cls : type
        The frozen settings dataclass the keywords moved into.
    settings : cls, mapping or None
        What the caller passed as ``param``.
    legacy : mapping
        The ``**legacy`` keywords of the call.
    param : str
        The keyword the settings object is passed as.

    Raises
    ------
    TypeError
        A keyword that is not a field of ``cls`` (``func() got an unexpected keyword argument
        'name'``), or a bad ``settings``.
    """
    base = as_settings(cls, settings, param)
    if not legacy:
        return base
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in legacy:
        if key not in fields:
            raise TypeError(f"{func}() got an unexpected keyword argument {key!r}")
    new = ", ".join(f"{k}=..." for k in legacy)
    warnings.warn(
        f"{func}(): the keyword(s) {', '.join(legacy)} are deprecated and will be removed in the "
        f"next release; pass {param}={cls.__name__}({new}) instead", FutureWarning,
        stacklevel=_outside_level())
    return dataclasses.replace(base, **legacy)  # type: ignore[type-var]
