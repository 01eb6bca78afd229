"""Faults, one test per class (issue 13): every output atomic, the cache never trusted blindly,
no input that hangs, header-only manifests, explicit label values, one grid check, and messages
that name the case, the field and what was expected.

Small data only (6x8x8 volumes); disk-full is a monkeypatched write raising ``ENOSPC``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai._io import atomic_write, write_csv
from medseg_xai.audit import write_outputs
from medseg_xai.audit.cache import CaseCache
from medseg_xai.cohort import load_on_one_grid, load_volume

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import FAST, SHAPE, nifti, write_cohort  # noqa: E402


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("faults") / "cohort", n=4).parent


@pytest.fixture(scope="module")
def result(cohort_dir):
    return mx.audit(mx.Cohort.from_csv(cohort_dir / "manifest.csv"), strata=["site"], **FAST)


# ------------------------------------------------------------------ atomic writes, disk full


def _disk_full_after(monkeypatch, n_bytes: int) -> None:
    """Every file opened through os.fdopen accepts ``n_bytes`` and then fails like a full disk."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        write, budget = fh.write, [n_bytes]

        def limited(data):
            if len(data) > budget[0]:
                write(data[: budget[0]])
                raise OSError(errno.ENOSPC, "No space left on device")
            budget[0] -= len(data)
            return write(data)

        fh.write = limited
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_disk_full_leaves_no_truncated_output_and_no_temporary_file(result, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    good = write_outputs(result, out)  # a complete earlier run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _disk_full_after(monkeypatch, 100)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(result, out)
    with pytest.raises(OSError):
        result.to_html(out / "report.html")
    monkeypatch.undo()
    # the earlier complete files are untouched, no partial file replaced them, nothing left over
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads(good["json"].read_text(encoding="utf-8"))["tables"]["cases"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _disk_full_after(monkeypatch, 10)
    with pytest.raises(OSError):
        write_outputs(result, fresh)
    monkeypatch.undo()
    assert list(fresh.iterdir()) == []  # no audit.json that looks valid, no .tmp files


def test_atomic_write_keeps_permissions_and_replaces(tmp_path):
    p = atomic_write(tmp_path / "a.txt", "one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two" and oct(p.stat().st_mode & 0o777) != "0o600"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_cache_write_failure_is_an_error_not_a_silent_success(tmp_path, monkeypatch):
    cache = CaseCache(tmp_path / "cache")
    _disk_full_after(monkeypatch, 5)
    with pytest.raises(OSError, match="No space left"):
        cache.put("k" * 64, {"status": "ok", "error": "", "dice": 1.0, "lesions": []})
    monkeypatch.undo()
    assert list((tmp_path / "cache").iterdir()) == []


# -------------------------------------------------------------------------- CSV formulas


def test_csv_formula_cells_are_neutralised_numbers_are_not(tmp_path):
    cells = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain", "a=b"]
    df = pd.DataFrame({"text": cells, "number": [-1.5, 2.0, -3.0, 0.0, 1.0, 2.0, 3.0, 4.0],
                       "=col": range(8)})
    back = pd.read_csv(write_csv(df, tmp_path / "t.csv"), keep_default_na=False)
    assert back["text"].tolist() == ["'" + c for c in cells[:6]] + ["plain", "a=b"]
    assert back["number"].tolist() == df["number"].tolist()  # still numbers, negative kept
    assert list(back.columns) == ["text", "number", "'=col"]


# -------------------------------------------------------------------------------- cache


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


@pytest.mark.parametrize("damage", ["edited", "empty", "truncated", "garbage", "schema", "swapped",
                                    "record_type"])
def test_damaged_cache_entries_are_recomputed_never_trusted(cohort_dir, result, tmp_path, damage):
    cohort = mx.Cohort.from_csv(cohort_dir / "manifest.csv")
    cache = tmp_path / "cache"
    first = mx.audit(cohort, strata=["site"], cache_dir=cache, **FAST)
    files = _entries(cache)
    assert len(files) == 4
    target = files[0]
    entry = json.loads(target.read_text())
    if damage == "edited":  # a plausible number, the checksum no longer matches
        entry["record"]["dice"] = 0.999
        target.write_text(json.dumps(entry))
    elif damage == "empty":
        target.write_text("")
    elif damage == "truncated":
        target.write_text(target.read_text()[:40])
    elif damage == "garbage":
        target.write_bytes(b"\xff\xfe\x00 not json")
    elif damage == "schema":
        target.write_text(json.dumps({"key": entry["key"], "record": entry["record"]}))
    elif damage == "swapped":  # another case's valid entry under this name
        other = json.loads(files[1].read_text())
        target.write_text(json.dumps(other))
    elif damage == "record_type":
        entry["record"] = ["not", "a", "record"]
        target.write_text(json.dumps(entry))
    again = mx.audit(cohort, strata=["site"], cache_dir=cache, **FAST)
    assert again.run["n_from_cache"] == 3  # the damaged entry was recomputed
    cols = ["case_id", "status", "dice", "hd95", "n_detected"]
    pd.testing.assert_frame_equal(again.cases[cols], first.cases[cols])
    pd.testing.assert_frame_equal(again.cases[cols], result.cases[cols])
    # and rewritten valid: a third run takes every case from the cache
    assert mx.audit(cohort, strata=["site"], cache_dir=cache, **FAST).run["n_from_cache"] == 4


def test_cache_get_counts_rejections(tmp_path):
    cache = CaseCache(tmp_path)
    key = "a" * 64
    cache.put(key, {"status": "ok", "error": "", "dice": 0.5, "lesions": []})
    assert cache.get(key)["dice"] == 0.5
    assert cache.get("b" * 64) is None and cache.rejected == 0  # absent is not rejected
    (tmp_path / f"{key[:32]}.json").write_text("{}")
    assert cache.get(key) is None and cache.rejected == 1


# ------------------------------------------------------------------ inputs that would hang


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_and_device_paths_fail_their_rows_without_blocking(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=4)
    d = manifest.parent
    os.remove(d / "lab1.nii.gz")
    os.mkfifo(d / "lab1.nii.gz")
    os.remove(d / "pred2.nii.gz")
    os.symlink("/dev/zero", d / "pred2.nii.gz")
    with pytest.warns(UserWarning, match="2 row problem"):
        cohort = mx.Cohort.from_csv(manifest)
    r = mx.audit(cohort, strata=["site"], **FAST)
    err = r.cases.set_index("case_id")["error"]
    assert r.n_rows == 4 and r.n_failed == 2
    assert "case 'c1': label: expected a regular file, got a FIFO (named pipe)" in err["c1"]
    assert "case 'c2': prediction: expected a regular file, got a character device" in err["c2"]
    with pytest.raises(ValueError, match="expected a regular file, got a FIFO"):
        load_volume(d / "lab1.nii.gz", what="label", case_id="c1")
    os.mkfifo(tmp_path / "manifest_fifo.csv")
    with pytest.raises(ValueError, match="manifest: expected a CSV file"):
        mx.Cohort.from_csv(tmp_path / "manifest_fifo.csv")


def test_header_only_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("case_id,image,label,prediction\n")
    with pytest.raises(ValueError, match="manifest: expected at least one case row, got a header "
                                         "only"):
        mx.Cohort.from_csv(tmp_path / "m.csv")


# ------------------------------------------------------------------------- label values


def _label_cohort(tmp_path: Path, label: np.ndarray) -> mx.Cohort:
    manifest = write_cohort(tmp_path / "c", n=2)
    nifti(manifest.parent / "lab1.nii.gz", label)
    return mx.Cohort.from_csv(manifest)


def _blob(value) -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[1:4, 2:6, 2:6] = value
    return lab


@pytest.mark.parametrize(("label", "found"), [
    (_blob(255).astype(np.uint8), "found [255]"),
    (_blob(7), "found [7]"),
    (_blob(-1), "found [-1]"),
    (np.random.default_rng(0).random(SHAPE).astype(np.float32) * 100, "non-integer value"),
])
def test_label_values_outside_the_declared_ones_fail_the_row(tmp_path, label, found):
    r = mx.audit(_label_cohort(tmp_path, label), **FAST)
    err = r.cases.set_index("case_id")["error"]["c1"]
    assert r.cases.set_index("case_id")["status"].tolist() == ["ok", "failed"]
    assert "case 'c1': label: expected" in err and found in err and "--binarize" in err


def test_binarize_and_declared_labels_accept_them(tmp_path):
    cohort = _label_cohort(tmp_path, _blob(7))
    plain = mx.audit(cohort, **FAST).cases.set_index("case_id")
    binar = mx.audit(cohort, binarize=True, **FAST).cases.set_index("case_id")
    assert binar["status"].tolist() == ["ok", "ok"] and plain.loc["c1", "status"] == "failed"
    # c1's label is c0's label with value 7: binarised, it scores like c0's own label would
    assert binar.loc["c1", "volume_ref_mm3"] == binar.loc["c0", "volume_ref_mm3"]
    declared = mx.audit(cohort, labels=[1, 7], **FAST).cases.set_index("case_id")
    assert declared["status"].tolist() == ["ok", "ok"]
    assert declared.loc["c1", "volume_ref_mm3_7"] == binar.loc["c1", "volume_ref_mm3"]


# ------------------------------------------------------------- one grid check, clear messages


def test_metrics_and_explain_loader_checks_grids_like_the_audit(tmp_path):
    lab = _blob(1).astype(np.uint8)
    ref = nifti(tmp_path / "ref.nii.gz", lab, np.diag([1.0, 1.0, 1.0, 1.0]))
    flipped = nifti(tmp_path / "flip.nii.gz", lab, np.diag([-1.0, 1.0, 1.0, 1.0]))
    coarse = nifti(tmp_path / "coarse.nii.gz", lab, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"case 'p': prediction grid does not match the "
                                         r"reference \(orientation or origin differ\)"):
        load_on_one_grid("p", {"reference": str(ref), "prediction": str(flipped)}, "reference")
    with pytest.raises(ValueError, match=r"expected spacing \(1.0, 1.0, 1.0\) mm, got "
                                         r"\(2.0, 2.0, 2.0\) mm"):
        load_on_one_grid("p", {"reference": str(ref), "prediction": str(coarse)}, "reference")
    arrays, affine = load_on_one_grid("p", {"reference": str(ref), "prediction": str(ref)},
                                      "reference")
    assert np.array_equal(arrays["prediction"], lab) and affine[0, 0] == 1.0


def _nan_affine_file(path: Path) -> Path:
    """A NIfTI-1 file whose sform (the affine readers use) holds NaN: header bytes patched, as
    nibabel refuses to write one."""
    import nibabel as nib

    img = nib.Nifti1Image(_blob(1).astype(np.uint8), np.eye(4))
    img.header.set_sform(np.eye(4), code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[280:296] = np.full(4, np.nan, "<f4").tobytes()  # srow_x (NIfTI-1 header offsets)
    path.write_bytes(bytes(raw))
    return path


def _huge_header_file(path: Path) -> Path:
    """A valid NIfTI header that declares 2**45 voxels over a few bytes of data."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    raw = bytearray(img.header.binaryblock)
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw)))
    hdr.set_data_shape((30000, 30000, 30000))
    path.write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    return path


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _csv_text(p: Path) -> Path:
    p.write_text("case_id,image\n")
    return p


def _gz(make):
    def make_gz(p: Path) -> Path:
        import gzip

        p.write_bytes(gzip.compress(make(p.parent / "plain.nii").read_bytes()))
        return p
    return make_gz


def _cut(n: int, gz: bool = False):
    def make(p: Path) -> Path:
        whole = nifti(p.parent / ("whole.nii.gz" if gz else "whole.nii"), _blob(1).astype(np.uint8))
        p.write_bytes(whole.read_bytes()[:n])
        return p
    return make


@pytest.mark.parametrize(("make", "name", "expected"), [
    (_empty, "bad.nii.gz", r"it is empty \(0 bytes\); expected a NIfTI file"),
    (_csv_text, "bad.nii", "not a NIfTI file .*expected a NIfTI-1/2 image"),
    (_csv_text, "bad.nii.gz", "not a NIfTI file .*not gzip data"),
    (_cut(300), "bad.nii", "truncated, 300 header bytes"),
    (_cut(400), "bad.nii", r"truncated, 400 bytes, expected \d+ for its declared shape"),
    (_cut(60, gz=True), "bad.nii.gz", "truncated"),
    (_nan_affine_file, "bad.nii", "affine .* holds NaN or infinite values; expected a finite"),
    (_huge_header_file, "bad.nii", r"truncated, \d+ bytes, expected \d+ for its declared shape "
                                   r"\(30000, 30000, 30000\)"),
    (_gz(_huge_header_file), "bad.nii.gz", r"its header declares shape \(30000, 30000, 30000\), "
                                           "too large to load"),
])
def test_unreadable_files_say_what_was_expected(tmp_path, make, name, expected):
    path = make(tmp_path / name)
    with pytest.raises(ValueError, match="^case 'c9': could not read label file 'bad.nii") as info:
        load_volume(path, is_image=False, what="label", case_id="c9")
    assert re.search(expected, str(info.value)), str(info.value)
