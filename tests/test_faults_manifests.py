"""Manifests as spreadsheets write them (issue 28): encodings, separators, ``NA`` texts, shared
files, Windows paths and nested Parquet cells."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from medseg_xai import Cohort
from medseg_xai._manifest import detect_encoding
from medseg_xai.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import FAST, write_cohort  # noqa: E402


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("manifests") / "c", n=4).parent


def _rows(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(folder / "manifest.csv")
    df["site"] = ["Hôpital Nord", "Zürich", "Hôpital Nord", "Zürich"]
    return df


def _write(df: pd.DataFrame, path: Path, encoding: str, sep: str = ",") -> Path:
    path.write_bytes(df.to_csv(index=False, sep=sep, lineterminator="\r\n").encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
def test_bom_and_utf16_manifests_read_without_warning(cohort_dir, encoding):
    path = _write(_rows(cohort_dir), cohort_dir / f"m_{encoding}.csv", encoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = Cohort.from_csv(path)
    assert cohort.case_ids == ["c0", "c1", "c2", "c3"]  # no "\ufeffcase_id" column
    assert cohort.manifest["site"].tolist() == ["Hôpital Nord", "Zürich"] * 2
    assert len(cohort.problems) == 0


def test_cp1252_manifest_reads_with_a_warning(cohort_dir):
    path = _write(_rows(cohort_dir), cohort_dir / "m_cp1252.csv", "cp1252")
    with pytest.warns(UserWarning, match=r"m_cp1252\.csv.*not UTF-8.*read as cp1252"):
        cohort = Cohort.from_csv(path)
    assert cohort.manifest["site"].tolist()[:2] == ["Hôpital Nord", "Zürich"]


def test_undecodable_or_binary_manifest_is_refused_by_name(cohort_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"case_id,image,label\r\nc\x81\xff,a.nii.gz,b.nii.gz\r\n")
    with pytest.raises(ValueError, match=r"could not decode 'bad\.csv' as UTF-8 \(byte 0x81.*cp1252"):
        detect_encoding(bad)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"case_id,image\x00\x01\x02 label\n" + bytes(range(1, 40)))
    assert main(["audit", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert main(["audit", str(binary), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "bad.csv" in err[0] and "cp1252" in err[0]
    assert "binary.csv" in err[-1] and "NUL bytes" in err[-1]


def test_semicolon_separated_manifest(cohort_dir):
    path = _write(_rows(cohort_dir), cohort_dir / "m_semicolon.csv", "utf-8-sig", sep=";")
    cohort = Cohort.from_csv(path)
    assert cohort.case_ids == ["c0", "c1", "c2", "c3"] and "site" in cohort.metadata_columns


def test_na_texts_stay_text_unless_named(cohort_dir):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    df["case_id"] = ["NA", "null", "None", "c3"]
    df["site"] = ["NA", "None", "null", ""]
    path = cohort_dir / "m_na.csv"
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning, match=r"cells read as text, not as missing values"):
        cohort = Cohort.from_csv(path)
    assert cohort.case_ids == ["NA", "null", "None", "c3"]
    site = cohort.manifest["site"].tolist()
    assert site[:3] == ["NA", "None", "null"] and pd.isna(site[3])
    with pytest.raises(ValueError, match=r"case_id: expected a non-empty id in every row, got "
                                         r"empty ids in rows \[0\]"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Cohort.from_csv(path, na_values=["NA"])


def test_na_values_from_the_cli(cohort_dir, tmp_path):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    df["age"] = ["61", "NA", "47", "70"]
    path = cohort_dir / "m_age.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "o"
    assert main(["audit", str(path), "--out", str(out), "--quiet", "--no-html", "--workers",
                 "1", "--keep-columns", "age", "--na-values", "NA"]) == 0
    cases = pd.read_csv(out / "cases.csv")
    assert cases["age"].isna().tolist() == [False, True, False, False]
    assert cases["age"].dtype.kind == "f"  # numbers, so the column can be binned


def test_rows_sharing_files_warn(cohort_dir):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    df.loc[3, ["image", "label", "prediction"]] = df.loc[1, ["image", "label", "prediction"]]
    with pytest.warns(UserWarning, match=r"rows share files.*image of cases \['c1', 'c3'\]"):
        Cohort.from_dataframe(df, root=cohort_dir)


def test_windows_backslash_paths_are_found(cohort_dir, tmp_path):
    sub = cohort_dir / "scans"
    sub.mkdir(exist_ok=True)
    df = pd.read_csv(cohort_dir / "manifest.csv")
    for col in ("image", "label", "prediction"):
        for name in df[col]:
            target = sub / name
            if not target.exists():
                target.write_bytes((cohort_dir / name).read_bytes())
        df[col] = ["scans\\" + v for v in df[col]]
    df.to_csv(cohort_dir / "m_windows.csv", index=False)
    cohort = Cohort.from_csv(cohort_dir / "m_windows.csv")
    assert len(cohort.problems) == 0
    assert Path(cohort.paths("c0")["image"]) == sub / "img0.nii.gz"
    result = __import__("medseg_xai").audit(cohort, **FAST)
    assert result.n_failed == 0


def test_list_typed_parquet_stratum_is_refused_by_name(cohort_dir, tmp_path, capsys):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    df["image"] = [str(cohort_dir / v) for v in df["image"]]
    df["label"] = [str(cohort_dir / v) for v in df["label"]]
    df["prediction"] = [str(cohort_dir / v) for v in df["prediction"]]
    df["tags"] = [["a", "b"], ["a"], [], ["c"]]
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    code = main(["audit", str(path), "--out", str(tmp_path / "o"), "--quiet", "--no-html",
                 "--strata", "tags"])
    err = capsys.readouterr().err
    assert code == 2 and "column 'tags'" in err and "case 'c0'" in err, err
    assert len(err.strip().splitlines()) == 1
