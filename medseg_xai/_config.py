"""The REPORT.yaml schema: types per key, and the keys only the program writes.

A report configuration is shown in a regulatory record, so a wrongly typed value must stop the
run naming the key (``approvers: B. Reviewer`` used to become one signature row per letter), and
a provenance field (the recorded command line, versions, hashes) must come from the program,
never from a file anyone can edit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["PROVENANCE_KEYS", "TEXT_KEYS", "check_report_config"]

#: Keys shown as text: a string or number (or a list of them, joined with "; ").
TEXT_KEYS = ("title", "model_name", "model", "model_version", "model_fingerprint",
             "manufacturer", "owner", "intended_use", "intended_users", "reference_standard",
             "annotators", "annotation_protocol", "adjudication", "blinding", "test_set")
#: Keys shown as a list of lines (a single text is one line).
LIST_KEYS = ("exclusions", "limitations")
#: Written by the program (the CLI, the demo) only; a config file naming one is refused.
PROVENANCE_KEYS = ("command_line", "versions", "manifest_hash", "inputs_hash", "rendered_by",
                   "generated")
_SCALARS = (str, int, float, bool)


def _text(key: str, value: Any, source: str) -> None:
    if value is None or isinstance(value, _SCALARS):
        return
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return
    raise ValueError(f"{source}: {key}: expected a text (or a list of texts), got "
                     f"{type(value).__name__}")


def _approvers(value: Any, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ValueError(f"{source}: approvers: expected a list of {{role, name}} entries, got "
                         f"{type(value).__name__} {str(value)[:40]!r}")
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            continue  # a role without a name yet
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: approvers[{i}]: expected {{role, name}} or a role text, "
                             f"got {type(entry).__name__}")
        for k, v in entry.items():
            if k not in ("role", "name", "date"):
                raise ValueError(f"{source}: approvers[{i}]: unknown key {str(k)!r}; expected "
                                 "role, name (and date)")
            if v is not None and not isinstance(v, _SCALARS):
                raise ValueError(f"{source}: approvers[{i}].{k}: expected a text, got "
                                 f"{type(v).__name__}")


def check_report_config(config: Mapping[str, Any], source: str = "config", *,
                        from_file: bool = True) -> dict[str, Any]:
    """Validate a report configuration; returns it as a plain dict.

    Parameters
    ----------
    config : mapping
    source : str
        Names the file in messages (``"--config 'REPORT.yaml'"``).
    from_file : bool
        True for configuration a user wrote (a file, a dict given to the report): provenance
        keys are refused. False for what the program stored itself (``audit.json``'s
        ``report``), where the CLI wrote ``command_line``.

    Raises
    ------
    ValueError
        Naming the key and the type expected.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: expected a mapping of keys, got {type(config).__name__}")
    for key in config:
        if not isinstance(key, str):
            raise ValueError(f"{source}: expected text keys, got {key!r}")
    if from_file:
        forged = [k for k in PROVENANCE_KEYS if k in config]
        if forged:
            raise ValueError(f"{source}: {forged[0]}: written by the program (provenance), not "
                             "by a configuration file; remove it")
    for key in TEXT_KEYS:
        _text(key, config.get(key), source)
    for key in LIST_KEYS:
        _text(key, config.get(key), source)
    _approvers(config.get("approvers"), source)
    if not from_file and config.get("command_line") is not None:
        _text("command_line", config["command_line"], source)
    known = {*TEXT_KEYS, *LIST_KEYS, *PROVENANCE_KEYS, "approvers", "comparison"}
    unknown = sorted(k for k in config if k not in known)
    if unknown and from_file:
        warnings.warn(f"{source}: unknown key(s) {unknown[:8]} are not shown in the report "
                      f"(known: {sorted(known - {'comparison', *PROVENANCE_KEYS})})",
                      stacklevel=3)
    return dict(config)
