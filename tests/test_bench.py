"""The benchmark's outputs: bench/RESULTS.md and the chart drawn from it beside it (bench/RESULTS.svg)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench import run
from tests.conftest import ROOT

RESULTS = (ROOT / "bench" / "RESULTS.md").read_text()
SVG = "{http://www.w3.org/2000/svg}"


def test_the_chart_has_a_bar_per_row_of_the_results_as_long_as_its_requests_per_second():
    rows = run.table_rows(RESULTS)
    assert len(rows) == sum(line.startswith(("| asgi |", "| wsgi |")) for line in RESULTS.splitlines()) >= 10
    bars = [rect for rect in ET.fromstring(run.chart(rows, "t")).iter(f"{SVG}rect") if rect.get("class") == "bar"]
    assert len(bars) == len(rows)
    most = max(rps for _, _, rps, _ in rows)
    for bar, (_, _, rps, _) in zip(bars, rows, strict=True):
        assert abs(float(bar.get("width")) - 340 * rps / most) < 0.1


def test_labels_are_escaped():
    svg = run.chart([("asgi", "a <b> & c", 1.0, "")], "x & y")
    assert ET.fromstring(svg).find(f"{SVG}text").text == "x & y"


def test_the_committed_chart_is_the_one_of_the_committed_results():
    """``python bench/run.py`` writes both; ``--chart`` redraws the chart from RESULTS.md alone."""
    title = RESULTS.splitlines()[0].lstrip("# ") + ": requests/s"
    assert (ROOT / "bench" / "RESULTS.svg").read_text() == run.chart(run.table_rows(RESULTS), title)


def test_no_workload_refers_to_an_issue():
    assert all("issue" not in workload.lower() for _, workload, _, _ in run.table_rows(RESULTS))
    assert "issue" not in (ROOT / "bench" / "run.py").read_text().lower()


def test_the_readme_shows_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    main = RESULTS[:RESULTS.index("\n## ")] if "\n## " in RESULTS else RESULTS
    table = "\n".join(line for line in main.splitlines() if line.startswith("|"))
    assert table in readme
