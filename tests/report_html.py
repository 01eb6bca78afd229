"""Parse a rendered report back into tables (text + exact data-value) for the report tests."""

from __future__ import annotations

import re
from html.parser import HTMLParser

PROVENANCE_LINE = re.compile(r'<p class="muted provenance-line" id="provenance-line">.*?</p>',
                             re.S)


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


def by_id(html: str, element_id: str) -> str:
    """Text of the element with this id (first match)."""
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)<', html, re.S)
    assert m, element_id
    return m.group(1).strip()


def without_provenance_line(html: str) -> str:
    out, n = PROVENANCE_LINE.subn("", html)
    assert n == 1
    return out


def records(table: dict) -> list[dict]:
    """Rows of a parsed table as ``{column: (text, data-value)}``."""
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def json_rows(doc: dict, name: str) -> list[dict]:
    t = doc["tables"][name]
    return [dict(zip(t["columns"], r)) for r in t["data"]]


def _same(cell: tuple, expected, *, p: bool = False) -> bool:
    from medseg_xai.reports.tables import fmt, fmt_p

    text, value = cell
    if expected is None:
        return value == "nan" and text == "–"
    if isinstance(expected, str):
        return text == expected
    if isinstance(expected, bool):
        return text == fmt(expected)
    return float(value) == float(expected) and text == (fmt_p(expected) if p else fmt(expected))


def _compare(parsed: list[dict], rows: list[dict], mapping: dict, p_cols=()) -> int:
    assert len(parsed) == len(rows), (len(parsed), len(rows))
    n = 0
    for got, want in zip(parsed, rows):
        cols = list(got)
        for idx, key in mapping.items():
            expected = want[key]
            if key == "metric" and isinstance(expected, str):  # shown by its display name
                from medseg_xai.metrics.metadata import metric_label

                expected = metric_label(expected)
            assert _same(got[cols[idx]], expected, p=key in p_cols), (cols[idx], got[cols[idx]],
                                                                       key, expected)
            n += 1
    return n


def assert_numbers_equal_json(html: str, doc: dict) -> int:
    """Every subgroup row, criterion check, verdict and lesion-level row shown in ``html``
    carries the numbers of the audit JSON ``doc``; returns how many cells were compared."""
    p = parse(html)
    sub = json_rows(doc, "subgroups")
    n = 0
    for i, stratum in enumerate(doc["settings"]["strata"]):
        rows = [r for r in sub if r["stratum"] == stratum]
        if not rows:
            continue
        n += _compare(records(p.tables[f"subgroup-table-{i}"]), rows,
                      {0: "group", 1: "metric", 2: "n", 3: "estimate", 4: "ci_low", 5: "ci_high",
                       6: "gap", 7: "p_adjusted", 8: "flag"}, p_cols=("p_adjusted",))
    n += _compare(records(p.tables["overall-results"]), [r for r in sub if r["stratum"] == "overall"],
                  {0: "metric", 1: "n", 2: "estimate", 3: "ci_low", 4: "ci_high", 5: "median"})
    crit = json_rows(doc, "criteria")
    if crit:
        n += _compare(records(p.tables["criteria-results"]), crit,
                      {0: "criterion", 1: "stratum", 2: "group", 3: "n", 5: "value", 6: "op",
                       7: "threshold", 8: "status", 9: "reason"})
        n += _compare(records(p.tables["verdict-table"]), json_rows(doc, "verdicts"),
                      {0: "criterion", 1: "status", 2: "n_rows", 3: "n_pass", 4: "n_fail",
                       5: "n_insufficient", 6: "n_not_evaluated"})
        assert by_id(html, "verdict-status") == doc["verdict"] == by_id(html, "overall-verdict")
    det = json_rows(doc, "lesion_detection")
    if "detection-by-size" in p.tables:
        n += _compare(records(p.tables["detection-by-size"]),
                      [r for r in det if r["stratum"] == "overall"],
                      {0: "size_bin", 1: "n_lesions", 2: "n_detected", 3: "rate", 4: "ci_low",
                       5: "ci_high", 6: "flag"})
        n += _compare(records(p.tables["detection-subgroups"]),
                      [r for r in det if r["stratum"] != "overall"],
                      {0: "stratum", 1: "group", 2: "size_bin", 3: "n_lesions", 4: "n_detected",
                       5: "rate", 6: "ci_low", 7: "ci_high", 8: "p_adjusted", 9: "flag"},
                      p_cols=("p_adjusted",))
    if "fp-empty-scans" in p.tables:
        n += _compare(records(p.tables["fp-empty-scans"]), json_rows(doc, "false_positives"),
                      {0: "stratum", 1: "group", 2: "n_scans", 3: "n_with_fp", 4: "fp_scan_rate",
                       5: "ci_low", 6: "ci_high", 7: "fp_per_scan", 8: "p_adjusted", 9: "flag"},
                      p_cols=("p_adjusted",))
    if "bland-altman" in p.tables:
        n += _compare(records(p.tables["bland-altman"]), json_rows(doc, "volume_agreement"),
                      {0: "stratum", 1: "group", 2: "n", 3: "bias", 4: "bias_ci_low",
                       5: "bias_ci_high", 6: "sd", 7: "loa_low", 8: "loa_high", 9: "p_adjusted",
                       10: "flag"}, p_cols=("p_adjusted",))
    counts = json_rows(doc, "group_counts")
    shown = [r for k, t in p.tables.items() if k.startswith("counts-") for r in records(t)]
    n += _compare(shown, counts, {0: "group", 1: "n_rows", 2: "n_evaluated", 3: "n_failed",
                                  4: "n_with_reference_lesions",
                                  5: "n_without_reference_lesions"})
    return n
