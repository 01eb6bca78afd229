"""What a case-worker process holds: the adapter its initializer installed.

Its own module so that the runner, the killable workers (``isolated``) and the model probe
(``model_checks``) share it without importing each other.
"""

from __future__ import annotations

from typing import Any

#: The adapter installed in this worker process by the pool initializer (``"worker"`` tasks).
ADAPTER: Any = None


def resolve(adapter: Any) -> Any:
    """``adapter``, or the installed one when a task names it ``"worker"``."""
    return ADAPTER if isinstance(adapter, str) and adapter == "worker" else adapter
