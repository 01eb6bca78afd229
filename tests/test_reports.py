"""The HTML audit report: escaping, numbers equal to the JSON, failed cases, self-containment."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from medseg_xai.reports import render_html, write_html  # noqa: E402
from medseg_xai.reports.sample import synthetic_result  # noqa: E402
from medseg_xai.reports.tables import fmt, identifying  # noqa: E402

EVIL = "<script>alert(1)</script> Zürich \"quoted\" 'single' & 東京"


class TableParser(HTMLParser):
    """Collect every table by id: header texts and rows of (text, data-value)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.images: list[str] = []
        self.scripts = 0
        self._table: dict | None = None
        self._cell: list | None = None
        self._row: list | None = None
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], {"columns": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "th" and self._table is not None:
            self._in_th = True
            self._cell = [""]
        elif tag == "td" and self._row is not None:
            self._cell = ["", a.get("data-value")]
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag == "th" and self._table is not None and self._cell is not None:
            self._table["columns"].append(self._cell[0].strip())
            self._cell = None
            self._in_th = False
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def parse(html: str) -> TableParser:
    p = TableParser()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def evil_result():
    r = synthetic_result(80, seed=3, n_failed=4)
    r.cases.loc[r.cases["site"] == "site-A", "site"] = EVIL
    r.cases.loc[r.cases.index[r.cases["status"] == "failed"][0], "error"] = EVIL
    r.subgroups.loc[r.subgroups["group"] == "site-A", "group"] = EVIL
    return r


@pytest.fixture(scope="module")
def evil_html(evil_result, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    out = write_html(
        evil_result,
        path,
        config={
            "model_name": EVIL,
            "intended_use": "Triage of <b>MS</b> lesions",
            "limitations": [EVIL],
        },
    )
    assert out == path and out.is_file()
    return out.read_text(encoding="utf-8")


def test_untrusted_text_is_escaped_and_intact(evil_html):
    # No live tag from data; the text itself survives (escaped) and non-ASCII is intact.
    assert "<script>alert(1)</script>" not in evil_html
    assert "<b>MS</b>" not in evil_html
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; Zürich &#34;quoted&#34; &#39;single&#39; &amp; 東京"
        in evil_html
    )
    p = parse(evil_html)
    assert p.scripts == 0
    ident = dict((r[0][0], r[0][0]) for r in p.tables["identification-table"]["rows"])
    assert ident  # the key/value table parsed
    # html.parser unescapes data: the parsed text equals the original string exactly.
    texts = [c[0] for t in p.tables.values() for row in t["rows"] for c in row]
    assert EVIL in texts


def test_subgroup_numbers_equal_the_result_and_json(evil_result, evil_html, tmp_path):
    p = parse(evil_html)
    subgroup_tables = {k: v for k, v in p.tables.items() if k.startswith("subgroup-table-")}
    assert len(subgroup_tables) == 3  # site, device, patient_group
    evil_result.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    json_rows = {(r["stratum"], r["group"], r["metric"]): r for r in data["subgroups"]}
    strata = [s for s in dict.fromkeys(evil_result.subgroups["stratum"]) if s != "overall"]
    checked = 0
    for i, stratum in enumerate(strata):
        t = subgroup_tables[f"subgroup-table-{i}"]
        cols = t["columns"]
        assert cols[:6] == ["group", "metric", "n", "estimate", "95% CI low", "95% CI high"]
        for row in t["rows"]:
            rec = dict(zip(cols, row))
            key = (stratum, rec["group"][0], rec["metric"][0])
            jr = json_rows[key]
            df_row = evil_result.subgroups.set_index(["stratum", "group", "metric"]).loc[key]
            for col, name in (
                ("estimate", "estimate"),
                ("95% CI low", "ci_low"),
                ("95% CI high", "ci_high"),
                ("gap", "gap"),
                ("adjusted p", "p_adjusted"),
                ("n", "n"),
            ):
                text, value = rec[col]
                expected = jr[name]
                if expected is None:
                    assert text == "–" and value == "nan"
                    assert math.isnan(df_row[name])
                    continue
                assert float(value) == expected == pytest.approx(df_row[name], rel=0, abs=0)
                assert text == fmt(df_row[name])  # what the reader sees is the rounded value
                checked += 1
            assert rec["criterion"][0] in {"PASS", "FAIL", "INSUFFICIENT DATA", "–"}
    assert checked > 50


def test_failed_cases_listed_with_reasons(evil_result, evil_html):
    failed = evil_result.cases[evil_result.cases["status"] == "failed"]
    rows = parse(evil_html).tables["failed-cases"]["rows"]
    got = {r[0][0]: r[1][0] for r in rows}
    assert got == dict(zip(failed["case_id"], failed["error"]))
    assert "4 failed" in evil_html


def test_report_is_self_contained_and_never_shows_patient_ids(evil_result, evil_html):
    # No remote URL, protocol-relative URL or src other than an inline data URI.
    assert not re.search(r"https?://", evil_html)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", evil_html)
    srcs = re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", evil_html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"url\(", evil_html)
    assert "<link" not in evil_html and "@import" not in evil_html
    hrefs = re.findall(r"""href\s*=\s*["']([^"']*)""", evil_html)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    for pid in evil_result.cases["patient_id"]:
        assert pid not in evil_html
    assert "patient_id" not in evil_html


def test_sections_toc_and_print_css(evil_html):
    for key in (
        "identification",
        "provenance",
        "sap",
        "overall",
        "subgroups",
        "lesions",
        "failures",
        "limitations",
        "reproducibility",
    ):
        assert f'id="{key}"' in evil_html and f'href="#{key}"' in evil_html
    assert 'id="comparison"' not in evil_html  # no comparison given
    assert "@media print" in evil_html and "page-break" in evil_html
    p = parse(evil_html)
    assert len(p.images) >= 5  # distributions, 3 forest plots, detection, Bland-Altman
    assert "Acceptance criterion failed" in evil_html or "FAIL" not in evil_html


def test_limitations_flag_small_subgroups_and_failures(evil_result, evil_html):
    small = evil_result.subgroups[
        (evil_result.subgroups["n"] < 10) & (evil_result.subgroups["stratum"] != "overall")
    ]
    for rec in small.drop_duplicates(["stratum", "group"]).to_dict("records"):
        assert f"has n = {rec['n']} (&lt; 10)" in evil_html
    assert "4 of 80 cases failed" in evil_html


def test_degrades_when_every_case_failed_and_nothing_else_exists():
    r = synthetic_result(12, n_failed=12, lesions=False)
    html = render_html(r)
    assert "Every one of the 12 cases failed" in html
    assert "No overall estimate" in html or "overall-results" in html
    assert "No reference lesions" in html
    rows = parse(html).tables["failed-cases"]["rows"]
    assert len(rows) == 12


def test_degrades_without_lesions_adapter_or_cohort():
    r = synthetic_result(40, seed=1, lesions=False)
    html = render_html(r, max_gallery=3)
    assert "No reference lesions" in html
    assert "no cohort given to the report" in html
    assert "No model was given to the report" in html
    assert html.count('class="card"') == 3  # gallery capped


class _Case:
    def __init__(self, case_id, image, label, prediction):
        self.case_id, self.image, self.label, self.prediction = case_id, image, label, prediction
        self.spacing = (2.0, 1.0, 1.0)
        self.probability = None
        self.metadata = {}


class _Cohort:
    """Images for the gallery: a lesion the prediction misses entirely."""

    def __init__(self):
        self.loaded: list[str] = []

    def load_case(self, case_id):
        self.loaded.append(case_id)
        img = np.random.default_rng(0).normal(size=(1, 8, 16, 16)).astype(np.float32)
        label = np.zeros((8, 16, 16), np.uint8)
        label[3:5, 4:8, 4:8] = 1
        return _Case(case_id, img, label, np.zeros_like(label))


def test_gallery_overlays_and_precomputed_explanations():
    r = synthetic_result(40, seed=2)
    missed = r.lesions[r.lesions["status"] == "missed"]
    cohort = _Cohort()
    # explain every missed lesion of every case with a constant map inside the lesion
    att = np.zeros((8, 16, 16), np.float32)
    att[3:5, 4:8, 4:8] = 1.0
    att[0, 0, 0] = 1.0  # a little attribution outside the lesion
    expl = {cid: {"attribution": att, "method": "saliency"} for cid in missed["case_id"]}
    html = render_html(r, cohort=cohort, explanations=expl, max_gallery=40, max_explanations=2)
    assert cohort.loaded  # images were loaded for the gallery
    assert "overlay unavailable" not in html
    assert html.count('class="card explanation"') == 2
    # localisation = share of positive attribution in the lesion: 32 / 33
    assert f"<strong>{fmt(32 / 33)}</strong>" in html


def test_comparison_section_and_config_yaml(tmp_path):
    r = synthetic_result(30, seed=4)

    class Comparison:
        subgroups = pd.DataFrame(
            {
                "stratum": ["device"],
                "group": ["GE"],
                "metric": ["dice"],
                "difference": [-0.05],
                "ci_low": [-0.09],
                "ci_high": [-0.01],
            }
        )
        worse = ["device = GE (dice)"]
        names = ["v1", "v2 <new>"]

    cfg = tmp_path / "report.yaml"
    cfg.write_text(
        "model_name: Lesion net\nintended_use: research only\n"
        "approvers:\n  - {role: QA lead, name: Dr Ö}\n",
        encoding="utf-8",
    )
    html = render_html(r, comparison=Comparison(), config=cfg)
    assert 'id="comparison"' in html and "v1 vs v2 &lt;new&gt;" in html
    assert "device = GE (dice)" in html and "Lesion net" in html and "Dr Ö" in html
    rows = parse(html).tables["comparison-subgroups"]["rows"]
    assert float(rows[0][3][1]) == -0.05  # the difference column, exact


def test_bad_arguments_raise_value_errors(tmp_path):
    r = synthetic_result(10)
    with pytest.raises(ValueError, match="result"):
        render_html(object())
    with pytest.raises(ValueError, match="config"):
        render_html(r, config=tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="max_gallery"):
        render_html(r, max_gallery=-1)
    with pytest.raises(ValueError, match="explanations"):
        render_html(r, explanations=[{"no": "case"}])


@pytest.mark.parametrize(
    "column, hidden",
    [
        ("patient_id", True),
        ("PatientName", True),
        ("PatientBirthDate", True),
        ("image", True),
        ("case_id", False),
        ("site", False),
        ("device", False),
        ("dice", False),
    ],
)
def test_identifying_columns(column, hidden):
    assert identifying(column) is hidden
