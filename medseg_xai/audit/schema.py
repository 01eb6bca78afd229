"""Validate an ``audit.json`` document before anything reads it (issue 28).

``medseg-xai report`` renders whatever file it is given; a damaged or hostile one (a top-level
array, a missing ``tables`` key, a table whose rows are not lists, deep nesting, a figure whose
declared shape does not match its data, two subgroup rows with one label) used to end in an
internal error (RecursionError, KeyError, AttributeError) or a crash deep in the renderer. Here
the document is checked against the layout of ``docs/audit_json.md`` first, and a violation is a
``ValueError`` naming its JSON path (``tables.subgroups.data[3]``), i.e. exit code 2.

Limits: the file size (:data:`MAX_BYTES`, 4 GiB: a 100,000-case audit is about 0.5 GB) and the
nesting depth (:data:`MAX_DEPTH`; the deepest legitimate value, a miss analysis inside a
gallery entry, is about 10 levels).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

SCHEMA = "medseg-xai/audit"
#: 1.1 (additive over 1.0: verdict, report, explanations, group_counts, reader and model tables,
#: run.efficiency, settings.convention / matching); any 1.x is read, missing keys as empty.
#: Layout and history: docs/audit_json.md.
SCHEMA_VERSION = "1.1"

__all__ = ["MAX_BYTES", "MAX_DEPTH", "check_audit_document", "load_audit_json"]

MAX_BYTES = 4 << 30
MAX_DEPTH = 32
_DTYPES = ("int", "float", "bool", "object")
#: Columns a table must hold to be drawn, and which of them identify a row (with the optional
#: key columns below where present: per-class and per-comparison tables repeat the others).
_REQUIRED = {
    "cases": (("case_id", "status"), ("case_id",)),
    "subgroups": (("stratum", "group", "metric", "n", "estimate"), ("stratum", "group", "metric")),
    "lesions": (("case_id", "status"), ()),
    "criteria": (("criterion", "status"), ()),
    "verdicts": (("criterion", "status"), ()),
    "lesion_detection": (("stratum", "group", "size_bin"), ("stratum", "group", "size_bin")),
    "false_positives": (("stratum", "group"), ("stratum", "group")),
    "volume_agreement": (("stratum", "group"), ("stratum", "group")),
    "group_counts": (("stratum", "group"), ("stratum", "group")),
}
_EXTRA_KEYS = ("class", "label", "class_name", "comparison", "reader_a", "reader_b", "layer")
_MAX_PLANE = 1 << 12  # pixels per side of a stored gallery plane (they are crops of ~96)


def load_audit_json(path: str | Path, *, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Read and validate an ``audit.json`` file (see the module docstring).

    Raises
    ------
    ValueError
        Too large, not JSON, too deep, or not the documented layout: naming the file and the
        JSON path.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"audit.json {p.name!r}: expected at most {max_bytes} bytes, got {size}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"audit.json {p.name!r}: refused: nesting deeper than the parser "
                         f"allows (expected at most {MAX_DEPTH} levels)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"audit.json {p.name!r}: expected UTF-8 JSON, got byte "
                         f"0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"audit.json {p.name!r}: expected a valid JSON file, could not parse "
                         f"it ({exc.msg} at line {exc.lineno})") from None
    check_audit_document(data, f"audit.json {p.name!r}")
    return data


def _fail(where: str, path: str, expected: str, got: Any) -> None:
    shown = type(got).__name__ if not isinstance(got, (str, int, float)) else repr(got)[:40]
    raise ValueError(f"{where}: {path}: expected {expected}, got {shown}")


def _depth(data: Any, where: str, path: str = "", start: int = 0,
           skip: tuple[str, ...] = ()) -> None:
    """Iterative depth check (no recursion, so no RecursionError on hostile input); top-level
    keys in ``skip`` are left to the table checks (their cells are checked one by one)."""
    stack = [(v, start + 1, k) for k, v in data.items() if k not in skip] \
        if isinstance(data, dict) and skip else [(data, start, path)]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: {path or '(top)'}: refused: nesting deeper than "
                             f"{MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k))
                         for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))


def check_audit_document(data: Any, where: str = "audit.json") -> None:
    """Check a parsed document against the ``audit.json`` layout; raise naming the path."""
    if not isinstance(data, dict):
        _fail(where, "(top)", "a JSON object", data)
    if data.get("schema") != SCHEMA:  # another tool's JSON: say so before any layout detail
        raise ValueError(f"{where}: expected schema {SCHEMA!r}, got {str(data.get('schema'))[:40]!r}")
    major = str(data.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"{where}: expected schema version {SCHEMA_VERSION.split('.')[0]}.x, "
                         f"got {str(data.get('schema_version'))[:20]!r}")
    _depth(data, where, skip=("tables", "timings"))
    for key in ("settings", "provenance", "report", "run"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            _fail(where, key, "an object", data[key])
    if data.get("verdict") is not None and not isinstance(data["verdict"], str):
        _fail(where, "verdict", "a text", data["verdict"])
    if "tables" not in data:
        raise ValueError(f"{where}: tables: expected the key 'tables' (an object of tables), "
                         "found none")
    tables = data["tables"]
    if not isinstance(tables, dict):
        _fail(where, "tables", "an object of tables", tables)
    for name, table in tables.items():
        _check_table(where, f"tables.{name}", table, _REQUIRED.get(name))
    if data.get("timings") is not None:
        _check_table(where, "timings", data["timings"], None)
    explanations = data.get("explanations")
    if explanations is not None:
        if not isinstance(explanations, list):
            _fail(where, "explanations", "a list", explanations)
        for i, entry in enumerate(explanations):
            _check_explanation(where, f"explanations[{i}]", entry)


def _check_table(where: str, path: str, table: Any, required: tuple | None) -> None:
    if not isinstance(table, dict):
        _fail(where, path, "an object {columns, dtypes, data}", table)
    cols, dtypes, rows = table.get("columns"), table.get("dtypes"), table.get("data")
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        _fail(where, f"{path}.columns", "a list of column names", cols)
    if len(set(cols)) != len(cols):
        dup = sorted({c for c in cols if cols.count(c) > 1})
        raise ValueError(f"{where}: {path}.columns: expected unique names, got {dup[0]!r} twice")
    if not isinstance(dtypes, list) or len(dtypes) != len(cols) or any(
            d not in _DTYPES for d in dtypes):
        _fail(where, f"{path}.dtypes", f"one of {list(_DTYPES)} per column", dtypes)
    if not isinstance(rows, list):
        _fail(where, f"{path}.data", "a list of rows", rows)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(cols):
            _fail(where, f"{path}.data[{i}]", f"a list of {len(cols)} cells", row)
    for j, (col, dtype) in enumerate(zip(cols, dtypes)):
        _check_column(where, path, col, dtype, (row[j] for row in rows))
    if required is None or not rows:
        return
    need, key = required
    missing = [c for c in need if c not in cols]
    if missing:
        raise ValueError(f"{where}: {path}.columns: expected column(s) {missing}, found none")
    key_cols = [*key, *(c for c in _EXTRA_KEYS if key and c in cols)]
    if key_cols:
        idx = [cols.index(c) for c in key_cols]
        seen: dict[tuple, int] = {}
        for i, row in enumerate(rows):
            k = tuple(json.dumps(row[j], sort_keys=True) for j in idx)
            if k in seen:
                raise ValueError(f"{where}: {path}.data[{i}]: expected one row per "
                                 f"{'/'.join(key_cols)}, got {[row[j] for j in idx]} again "
                                 f"(first in row {seen[k]})")
            seen[k] = i


def _check_column(where: str, path: str, col: str, dtype: str, cells: Any) -> None:
    for i, v in enumerate(cells):
        ok = (v is None or (dtype == "int" and isinstance(v, int) and not isinstance(v, bool))
              or (dtype == "bool" and isinstance(v, bool))
              or (dtype == "float" and (isinstance(v, (int, float)) and not isinstance(v, bool)
                                        or v in ("inf", "-inf", "nan")))
              or dtype == "object")
        if isinstance(v, (list, dict)):  # coordinate lists; nothing deeper is written
            _depth(v, where, f"{path}.data[{i}].{col}", start=4)
        if not ok:
            _fail(where, f"{path}.data[{i}].{col}", f"a {dtype} value", v)


def _check_explanation(where: str, path: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        _fail(where, path, "an object", entry)
    figure = entry.get("figure")
    if figure is None:
        return
    if not isinstance(figure, dict) or not isinstance(figure.get("planes", []), list):
        _fail(where, f"{path}.figure", "an object with a list of planes", figure)
    for i, plane in enumerate(figure.get("planes", [])):
        if not isinstance(plane, dict):
            _fail(where, f"{path}.figure.planes[{i}]", "an object", plane)
        for layer in ("image", "ref", "pred", "target", "heatmap"):
            if plane.get(layer) is not None:
                _check_array(where, f"{path}.figure.planes[{i}].{layer}", plane[layer])


def _check_array(where: str, path: str, obj: Any) -> None:
    """A stored plane: 1-2 axes of 1..4096 pixels, and exactly the bytes its shape needs."""
    if not isinstance(obj, dict) or obj.get("dtype") not in ("bits", "float16"):
        _fail(where, f"{path}.dtype", "'bits' or 'float16'", obj if not isinstance(obj, dict)
              else obj.get("dtype"))
    shape = obj.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_PLANE
                       for s in shape)):
        _fail(where, f"{path}.shape", f"1 or 2 sizes between 1 and {_MAX_PLANE}", shape)
    n = math.prod(shape)
    need = (n + 7) // 8 if obj["dtype"] == "bits" else 2 * n
    try:
        got = len(base64.b64decode(obj.get("data", ""), validate=True))
    except (binascii.Error, TypeError, ValueError):
        _fail(where, f"{path}.data", "base64 text", obj.get("data"))
    if got != need:
        raise ValueError(f"{where}: {path}: expected {need} bytes for shape {shape}, got {got}")
