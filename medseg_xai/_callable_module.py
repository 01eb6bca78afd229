"""Sub-packages that are also functions: ``mx.explain(...)`` and ``mx.audit(...)``.

``medseg_xai.explain`` and ``medseg_xai.audit`` are packages (``import medseg_xai.audit.stats``
must work) and, by the public API, functions (``mx.audit(cohort)``). A name cannot be both, so
the package module itself is made callable: its class is swapped for a ``ModuleType`` subclass
whose ``__call__`` forwards to the function of the same name. The module stays the one object in
``sys.modules``, attribute access is unchanged, and ``inspect.signature`` reports the function's
signature.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any


class CallableModule(types.ModuleType):
    """A module that forwards calls to its attribute named like its last dotted component."""

    @property
    def _function(self) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[-1])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._function)


def make_callable(module_name: str) -> None:
    """Make the module ``module_name`` callable (call from its own ``__init__``)."""
    sys.modules[module_name].__class__ = CallableModule
