"""Hostile configuration (issue 28): YAML alias bombs, size and depth limits, repeated keys,
REPORT.yaml types per key, and provenance that only the program writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg_xai._yaml import load_yaml_text
from medseg_xai.cli import main
from medseg_xai.reports.render import load_config

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import write_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# 2 KB: nine levels of nine aliases = 9**9 (387 million) strings once expanded
BOMB = "a: &a [" + ",".join(["lol"] * 9) + "]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    for i in range(8))


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("config")
    manifest = write_cohort(folder / "c", n=2)
    out = folder / "out"
    assert main(["audit", str(manifest), "--out", str(out), "--workers", "1", "--quiet",
                 "--no-html"]) == 0
    return out


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "medseg_xai", *argv], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_alias_bomb_is_refused_fast_and_leaves_nothing(audited, tmp_path):
    assert len(BOMB) < 2048
    bomb = tmp_path / "REPORT.yaml"
    bomb.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"REPORT\.yaml.*refused: more than 100000 values once aliases"):
        load_config(bomb)
    assert time.perf_counter() - t0 < 1.0
    out = tmp_path / "render"
    proc = _cli("report", str(audited / "audit.json"), "--out", str(out / "report.html"),
                "--config", str(bomb))
    assert proc.returncode == 2 and "alias" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # no report, no .tmp
    code = main(["audit", str(audited.parent / "c" / "manifest.csv"), "--out",
                 str(tmp_path / "o"), "--quiet", "--config", str(bomb)])
    assert code == 2 and not (tmp_path / "o").exists()


def test_bomb_in_criteria_and_other_limits(tmp_path, capsys):
    crit = tmp_path / "criteria.yaml"
    crit.write_text(BOMB)
    manifest = write_cohort(tmp_path / "c", n=2)
    assert main(["audit", str(manifest), "--out", str(tmp_path / "o"), "--quiet",
                 "--criteria", str(crit)]) == 2
    assert "criteria" in capsys.readouterr().err
    # a few aliases expanding past the node limit
    wide = "a: &a [" + ",".join(["x"] * 1000) + "]\nb: [" + ",".join(["*a"] * 99) + "]\n"
    with pytest.raises(ValueError, match="more than 100000 values once aliases are expanded"):
        load_yaml_text(wide, "t")
    with pytest.raises(ValueError, match="nesting deeper than 50"):
        load_yaml_text("[" * 60 + "]" * 60, "t")
    with pytest.raises(ValueError, match="nesting too deep|nesting deeper"):
        load_yaml_text("[" * 5000 + "]" * 5000, "t")
    with pytest.raises(ValueError, match="at most 1048576 bytes"):
        load_yaml_text("title: " + "x" * (1 << 20), "t")
    with pytest.raises(ValueError, match=r"the key 'approvers' appears twice .*line 1"):
        load_yaml_text("approvers: []\ntitle: t\napprovers: [{role: r}]\n", "t")
    with pytest.raises(ValueError, match=r"could not parse it at line 3 \(expected"):
        load_yaml_text("a: 1\nb: [unclosed\n", "t")
    assert load_yaml_text("a: &x [1, 2]\nb: *x\n", "t") == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize("text, key", [
    ("approvers: B. Reviewer\n", "approvers"),
    ("approvers: [[1, 2]]\n", "approvers[0]"),
    ("approvers: [{role: R, name: [a, b]}]\n", "approvers[0].name"),
    ("approvers: [{role: R, signature: x}]\n", "approvers[0]"),
    ("intended_use: {a: b}\n", "intended_use"),
    ("limitations: [[nested]]\n", "limitations"),
    ("title: [{a: 1}]\n", "title"),
    ("- a\n- b\n", "mapping"),
])
def test_wrongly_typed_keys_exit_2_naming_the_key(audited, tmp_path, capsys, text, key):
    cfg = tmp_path / "REPORT.yaml"
    cfg.write_text(text)
    code = main(["report", str(audited / "audit.json"), "--out", str(tmp_path / "r.html"),
                 "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and key in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()


def test_legal_values_render_and_unknown_keys_warn(audited, tmp_path):
    cfg = tmp_path / "REPORT.yaml"
    cfg.write_text("model_version: 2.1\nblinding: yes\nannotators: [2 readers, 1 adjudicator]\n"
                   "approvers: [Prepared by, {role: Approved by, name: B. Reviewer}]\n")
    assert load_config(cfg)["model_version"] == 2.1
    assert main(["report", str(audited / "audit.json"), "--out", str(tmp_path / "r.html"),
                 "--config", str(cfg)]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "B. Reviewer" in html and "2 readers; 1 adjudicator" in html
    cfg.write_text("intended_usage: typo\n")
    with pytest.warns(UserWarning, match=r"unknown key\(s\) \['intended_usage'\]"):
        load_config(cfg)


@pytest.mark.parametrize("key", ["command_line", "versions", "inputs_hash"])
def test_provenance_cannot_come_from_a_config(audited, tmp_path, capsys, key):
    cfg = tmp_path / "REPORT.yaml"
    cfg.write_text(f"{key}: medseg-xai audit forged.csv\n")
    manifest = audited.parent / "c" / "manifest.csv"
    assert main(["audit", str(manifest), "--out", str(tmp_path / "o"), "--quiet",
                 "--config", str(cfg)]) == 2
    assert f"{key}: written by the program" in capsys.readouterr().err
    assert main(["report", str(audited / "audit.json"), "--out", str(tmp_path / "r.html"),
                 "--config", str(cfg)]) == 2


def test_recorded_command_line_is_the_real_one(audited, tmp_path):
    cfg = tmp_path / "REPORT.yaml"
    cfg.write_text("title: T\n")
    manifest = audited.parent / "c" / "manifest.csv"
    assert main(["audit", str(manifest), "--out", str(tmp_path / "o"), "--quiet", "--no-html",
                 "--workers", "1", "--config", str(cfg)]) == 0
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert doc["report"]["command_line"].startswith("medseg-xai audit manifest.csv --out o")
    assert doc["report"]["title"] == "T"


def test_many_aliases_are_refused():
    text = "a: &a x\nb: [" + ",".join(["*a"] * 101) + "]\n"
    with pytest.raises(ValueError, match="more than 100 alias references"):
        load_yaml_text(text, "t")


def test_hostile_criteria_json(tmp_path):
    from medseg_xai.audit.criteria import load_criteria

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"criteria 'deep.json': refused: nesting deeper"):
        load_criteria(str(deep))
    broken = tmp_path / "broken.json"
    broken.write_text('{"criteria": [')
    with pytest.raises(ValueError, match=r"criteria 'broken.json': expected valid JSON"):
        load_criteria(str(broken))
