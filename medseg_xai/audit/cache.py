"""Per-case result cache: one small JSON file per case, keyed by a content hash.

The key hashes the bytes of every input file of the case (image, reference, prediction,
probability), the evaluation settings, the model fingerprint (when inference runs) and the
package version. Changing any of them gives a new key, so a stale entry is never reused; an
interrupted audit finds the finished cases under their keys and recomputes only the rest.
Writes go to a temporary file first and are renamed into place, so a crash mid-write never
leaves a half-written entry; and every read is validated (schema, key, a checksum over the record
bound to the key), so a corrupt, truncated, empty or edited entry is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg_xai._io import file_kind

__all__ = ["CaseCache", "file_digest", "input_hash"]

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (name and bytes, sorted)."""
    p = Path(path)
    if p.exists() and not (p.is_file() or p.is_dir()):  # reading a FIFO or device never ends
        raise ValueError(f"{p.name!r}: expected a regular file or a folder, got "
                         f"{file_kind(p)}")
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode("utf-8"))
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def input_hash(
    paths: Mapping[str, str | None], settings: Mapping[str, Any], extra: str = ""
) -> str:
    """Content hash of a case's inputs and the settings that shape its per-case result.

    Parameters
    ----------
    paths : mapping
        Path columns of the case (None for absent ones).
    settings : mapping
        Per-case evaluation settings (JSON-serialisable).
    extra : str
        Anything else that changes the result (model fingerprint, package version).

    Raises
    ------
    FileNotFoundError
        If a named file does not exist.
    """
    h = hashlib.sha256()
    for name in sorted(paths):
        value = paths[name]
        h.update(name.encode("utf-8"))
        h.update(b"-" if value is None else file_digest(value).encode("ascii"))
    h.update(_canonical(dict(settings)).encode("utf-8"))
    h.update(extra.encode("utf-8"))
    return h.hexdigest()


def _to_json(obj: Any) -> Any:
    # JSON has no NaN/inf; encode them as tagged strings so a cache round trip is exact.
    if isinstance(obj, float):
        if math.isnan(obj):
            return "__nan__"
        if math.isinf(obj):
            return "__inf__" if obj > 0 else "__-inf__"
        return obj
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return _to_json(obj.item())
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, str):
        return {"__nan__": math.nan, "__inf__": math.inf, "__-inf__": -math.inf}.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


#: Version of the entry layout; entries of another version are recomputed.
SCHEMA = 2
# What a trusted record holds at least (an evaluated case; failures are never cached).
_REQUIRED = {"status": str, "error": str, "dice": (int, float, str), "lesions": list}


def _checksum(key: str, record_json: Any) -> str:
    """SHA-256 over the input key and the record's canonical JSON: an entry is bound to the
    inputs it was computed from, and any edit of its numbers changes the sum."""
    return hashlib.sha256((key + "|" + _canonical(record_json)).encode("utf-8")).hexdigest()


def _valid_record(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("status") != "ok":
        return False
    return all(isinstance(record.get(k), t) for k, t in _REQUIRED.items())


class CaseCache:
    """A folder of per-case results.

    An entry is ``{"schema", "key", "checksum", "record"}``. It is used only when it parses,
    has this :data:`SCHEMA`, names the requested key (the hash of the case's input files and
    settings), its checksum matches the record and the record has the fields of an evaluated
    case. Anything else (empty, truncated, corrupt or edited entries, another version's layout)
    counts as a miss: the case is recomputed and the entry rewritten, never trusted and never
    a crash. :attr:`rejected` counts such entries.

    Parameters
    ----------
    folder : str or Path
        Created when missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rejected = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key[:32]}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record, or None when absent or not valid (then it is recomputed)."""
        p = self._path(key)
        if not p.exists():
            return None
        try:
            if not p.is_file():  # a FIFO or device under the cache name would block the read
                raise ValueError("not a regular file")
            data = json.loads(p.read_text(encoding="utf-8"))
            ok = (isinstance(data, dict) and data.get("schema") == SCHEMA
                  and data.get("key") == key and isinstance(data.get("checksum"), str)
                  and data["checksum"] == _checksum(key, data.get("record"))
                  and _valid_record(data.get("record")))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            ok = False
        if not ok:
            self.rejected += 1
            return None
        return _from_json(data["record"])

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store a record atomically (temporary file + rename).

        Raises
        ------
        OSError
            When the cache cannot be written (full disk, read-only folder): an infrastructure
            fault for the caller to abort on, not a case error.
        """
        from medseg_xai._io import atomic_write

        # insertion order kept: a cached record must rebuild the same column order
        body = _to_json(dict(record))
        entry = {"schema": SCHEMA, "key": key, "checksum": _checksum(key, body), "record": body}
        atomic_write(self._path(key), json.dumps(entry, allow_nan=False))

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))
