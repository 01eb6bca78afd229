"""``medseg-xai report`` on damaged or hostile audit.json files (issue 28): the document is
validated before rendering; every fault is exit 2 with one line naming the JSON path."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from medseg_xai.audit.schema import check_audit_document, load_audit_json
from medseg_xai.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import write_cohort  # noqa: E402


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("auditjson")
    manifest = write_cohort(folder / "c", n=4)
    out = folder / "out"
    assert main(["audit", str(manifest), "--out", str(out), "--workers", "1", "--quiet",
                 "--no-html", "--strata", "site", "--criteria", "default"]) == 0
    return json.loads((out / "audit.json").read_text())


def _report(tmp_path: Path, capsys, payload: str) -> tuple[int, str]:
    src = tmp_path / "audit.json"
    src.write_text(payload)
    code = main(["report", str(src), "--out", str(tmp_path / "r" / "report.html")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 1, err
    assert not (tmp_path / "r" / "report.html").exists() or code == 0
    return code, err


def test_the_real_document_passes_and_renders(doc, tmp_path, capsys):
    check_audit_document(doc)
    assert doc["explanations"] and doc["explanations"][0]["figure"]["planes"]
    code, err = _report(tmp_path, capsys, json.dumps(doc))
    assert code == 0, err


def _mutations():
    def deep(d, n):
        node: object = 0
        for _ in range(n):
            node = [node]
        d["settings"] = {"x": node}

    def set_(path, value):
        def f(d):
            *head, last = path
            for k in head:
                d = d[k]
            d[last] = value
        return f

    def dup_group(d):
        rows = d["tables"]["subgroups"]["data"]
        rows.append(list(rows[0]))

    def figure_shape(d):
        d["explanations"][0]["figure"]["planes"][0]["image"]["shape"] = [100000, 100000]

    def figure_bytes(d):
        d["explanations"][0]["figure"]["planes"][0]["image"]["shape"] = [8, 9]

    def bad_cell(d):
        t = d["tables"]["cases"]
        t["data"][1][t["columns"].index("dice")] = "abc"

    def short_row(d):
        d["tables"]["lesions"]["data"][0] = d["tables"]["lesions"]["data"][0][:3]

    return [
        ("deep-40", lambda d: deep(d, 40), "settings.x"),
        ("deep-100000", lambda d: deep(d, 100_000), "nesting deeper"),
        ("no-tables", lambda d: d.pop("tables"), "tables: expected the key 'tables'"),
        ("tables-list", set_(["tables"], [1, 2]), "tables: expected an object of tables"),
        ("cases-text", set_(["tables", "cases"], "oops"), "tables.cases: expected an object"),
        ("data-dict", set_(["tables", "subgroups", "data"], {"a": 1}),
         "tables.subgroups.data: expected a list of rows"),
        ("dtypes", set_(["tables", "verdicts", "dtypes"], ["int"]), "tables.verdicts.dtypes"),
        ("short-row", short_row, "tables.lesions.data[0]: expected a list of"),
        ("bad-cell", bad_cell, "tables.cases.data[1].dice: expected a float value, got 'abc'"),
        ("dup-group", dup_group, "tables.subgroups.data[30]: expected one row per "
                                 "stratum/group/metric"),
        ("figure-shape", figure_shape, "planes[0].image.shape: expected 1 or 2 sizes"),
        ("figure-bytes", figure_bytes, "planes[0].image: expected 144 bytes for shape [8, 9]"),
        ("explanations", set_(["explanations"], {"a": 1}), "explanations: expected a list"),
        ("settings", set_(["settings"], "x"), "settings: expected an object"),
        ("approvers", set_(["report", "approvers"], "B. Reviewer"), "approvers: expected a list"),
        ("schema", set_(["schema"], "other"), "expected schema 'medseg-xai/audit'"),
        ("version", set_(["schema_version"], "9.0"), "expected schema version 1.x"),
    ]


@pytest.mark.parametrize("name, mutate, expected", _mutations(), ids=[m[0] for m in _mutations()])
def test_hostile_document_exits_2_naming_the_path(doc, tmp_path, capsys, name, mutate, expected):
    bad = copy.deepcopy(doc)
    mutate(bad)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    try:
        payload = json.dumps(bad)
    except RecursionError:  # json.dumps cannot write it either: build the text by hand
        payload = json.dumps({**bad, "settings": None})[:-1] + ', "deep": ' + "[" * 100_000 \
            + "]" * 100_000 + "}"
    code, err = _report(tmp_path, capsys, payload)
    assert code == 2 and expected in err and "audit.json" in err, (name, err)


@pytest.mark.parametrize("payload, expected", [
    ("[1, 2, 3]", "(top): expected a JSON object, got list"),
    ('{"schema": "medseg-xai/audit", ', "could not parse it"),
    ("\xff\xfe", "could not parse it"),
    ("null", "(top): expected a JSON object"),
])
def test_not_a_document(tmp_path, capsys, payload, expected):
    code, err = _report(tmp_path, capsys, payload)
    assert code == 2 and expected in err and "'audit.json'" in err, err


def test_size_limit(tmp_path, doc):
    p = tmp_path / "audit.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"audit.json 'audit.json': expected at most 100 bytes"):
        load_audit_json(p, max_bytes=100)
