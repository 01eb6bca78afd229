"""Command-line classes of issue 13: exit codes 0 / 3 / 2 / 1, one line and no traceback for
bad input, options checked before any work, and the audit's checks in ``metrics``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg_xai.cli import EXIT_CODES, main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import SHAPE, nifti, write_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "medseg_xai", *argv], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    m = write_cohort(tmp_path_factory.mktemp("cli") / "c", n=3)
    (m.parent / "pred2.nii.gz").unlink()  # one row fails
    return m


def _lines(err: str) -> list[str]:
    """The command's own stderr lines (Python may print warnings there too)."""
    return [line for line in err.splitlines() if line.startswith("medseg-xai ")]


def _audit(manifest: Path, out: Path, *extra: str) -> int:
    return main(["audit", str(manifest), "--out", str(out), "--workers", "1", "--quiet",
                 "--no-html", *extra])


def test_help_documents_the_exit_codes():
    out = _cli("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert " ".join(EXIT_CODES.split()) in text
    assert "--max-failed" in " ".join(_cli("audit", "--help").stdout.split())


def test_failed_rows_exit_3_with_outputs_and_max_failed_allows_them(manifest, tmp_path, capsys):
    assert _audit(manifest, tmp_path / "a") == 3
    captured = capsys.readouterr()
    assert "(2 evaluated, 1 failed)" in captured.out and "1 row(s) failed" in captured.err
    assert (tmp_path / "a" / "audit.json").is_file() and (tmp_path / "a" / "cases.csv").is_file()
    assert _audit(manifest, tmp_path / "b", "--max-failed", "1") == 0
    assert _audit(manifest, tmp_path / "c", "--max-failed", "-1") == 2


def test_every_row_evaluated_exits_0(tmp_path):
    assert _audit(write_cohort(tmp_path / "ok", n=2), tmp_path / "out") == 0


def test_options_are_checked_before_any_work(manifest, tmp_path, monkeypatch, capsys):
    import medseg_xai.audit as audit_pkg

    calls = []
    monkeypatch.setattr(audit_pkg, "audit", lambda *a, **k: calls.append(1))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("intended_use: [unclosed\n")
    for extra in (["--config", str(tmp_path / "missing.yaml")], ["--config", str(bad_yaml)],
                  ["--criteria", str(tmp_path / "missing.yaml")],
                  ["--model", str(tmp_path / "missing.pt")]):
        code = main(["audit", str(manifest), "--out", str(tmp_path / "o"), "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(_lines(err)) == 1 and "Traceback" not in err, (extra, err)
    assert calls == [] and not (tmp_path / "o" / "audit.json").exists()


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: _write(d / "zero.nii.gz", b""), "it is empty (0 bytes)"),
    (lambda d: _write(d / "text.nii.gz", b"case_id,image\n"), "not a NIfTI file"),
    (lambda d: _write(d / "cut.nii", nifti(d / "w.nii", np.ones(SHAPE, np.uint8))
                      .read_bytes()[:380]), "truncated, 380 bytes"),
])
def test_bad_files_are_exit_2_with_one_line(tmp_path, make, expected, capsys):
    ref = nifti(tmp_path / "ref.nii.gz", np.ones(SHAPE, np.uint8))
    assert main(["metrics", str(make(tmp_path)), str(ref)]) == 2
    err = capsys.readouterr().err
    assert len(_lines(err)) == 1 and expected in err and str(tmp_path) not in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    ref = nifti(tmp_path / "ref.nii.gz", np.ones(SHAPE, np.uint8))
    out = _cli("metrics", str(_write(tmp_path / "zero.nii.gz", b"")), str(ref))
    assert out.returncode == 2 and len(_lines(out.stderr)) == 1, out.stderr
    assert "Traceback" not in out.stderr and "it is empty (0 bytes)" in out.stderr


def test_missing_or_header_only_table_and_non_torchscript_model_are_exit_2(tmp_path, capsys):
    header_only = tmp_path / "h.csv"
    header_only.write_text("case_id,image,label,prediction\n")
    fake_model = _write(tmp_path / "model.pt", b"PK\x03\x04 not a torchscript archive")
    cases = [(["audit", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")],
              "manifest: expected a file, found nothing"),
             (["audit", str(header_only), "--out", str(tmp_path / "o")], "header only"),
             (["audit", str(_write(tmp_path / "e.csv", b"")), "--out", str(tmp_path / "o")],
              "expected a table, got an empty file"),
             (["explain", str(fake_model), "--model", str(fake_model), "--out", str(tmp_path)],
              "--model: expected 'demo' or a TorchScript archive"),
             (["report", str(_write(tmp_path / "cut.json", b'{"tables":')), "--out",
               str(tmp_path / "r.html")], "expected a valid JSON file, could not parse it")]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(_lines(err)) == 1 and expected in err, err


def test_disk_full_and_internal_errors_exit_1_with_one_line(manifest, tmp_path, monkeypatch,
                                                          capsys):
    import medseg_xai.audit as audit_pkg

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "cases.csv"))

    monkeypatch.setattr(audit_pkg, "write_outputs", full)
    assert _audit(manifest, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "No space left on device: cases.csv" in err and len(_lines(err)) == 1
    assert str(tmp_path) not in err

    def bug(*a, **k):
        raise KeyError("input_hash")

    monkeypatch.setattr(audit_pkg, "write_outputs", bug)
    assert _audit(manifest, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "audit", str(manifest), "--out", str(tmp_path / "o"), "--workers", "1",
              "--quiet", "--no-html"])


def test_unwritable_cache_aborts_the_audit_with_one_line(manifest, tmp_path, monkeypatch,
                                                         capsys):
    from medseg_xai.audit.cache import CaseCache

    def full(self, key, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CaseCache, "put", full)
    code = _audit(manifest, tmp_path / "o", "--cache", str(tmp_path / "cache"))
    err = capsys.readouterr().err
    assert code == 1 and len(_lines(err)) == 1, err
    assert "cannot write the cache (No space left on device)" in err and "[Errno" not in err
    assert not (tmp_path / "o" / "cases.csv").exists()  # no table of "failed" computed cases


def test_metrics_command_applies_the_label_and_grid_rules(tmp_path, capsys):
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:4, 2:6, 2:6] = 1
    ref = nifti(tmp_path / "ref.nii.gz", lab)
    wide = nifti(tmp_path / "p255.nii.gz", lab * 255)
    flipped = nifti(tmp_path / "flip.nii.gz", lab, np.diag([-1.0, 1.0, 2.0, 1.0]))
    coarse = nifti(tmp_path / "coarse.nii.gz", lab, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert main(["metrics", str(wide), str(ref)]) == 2
    assert "prediction: expected label values [0, 1], found [255]" in capsys.readouterr().err
    assert main(["metrics", str(wide), str(ref), "--binarize"]) == 0
    assert '"dice": 1.0' in capsys.readouterr().out
    assert main(["metrics", str(wide), str(ref), "--labels", "255"]) == 2  # ref has 1, not 255
    assert "reference: expected label values [0, 255], found [1]" in capsys.readouterr().err
    assert main(["metrics", str(flipped), str(ref)]) == 2
    assert "orientation or origin differ" in capsys.readouterr().err
    assert main(["metrics", str(coarse), str(ref)]) == 2
    assert "expected spacing (1.0, 1.0, 2.0) mm, got (2.0, 2.0, 2.0) mm" in capsys.readouterr().err
