"""The benchmark at a tiny size, so it cannot rot. Its numbers are never asserted here:
machines are noisy; only that every case ran and the results have their documented form.
The sync benchmark runs countysync, on the local and on the production instance (PostgreSQL),
and two peers here (the other two tools are variants of the same cases: countysync with
fewer formats, dlt followed by ogr2ogr), over 8 days: in two halves, each countysync's way
with one peer, so the suite's workers run them side by side."""

import json

import pytest

from benchmarks import appraisal
from benchmarks.__main__ import OUTPUTS, TOOL_STEPS, main, report


@pytest.mark.parametrize("tools", [("countysync", "dlt"),
                                   ("countysync-pg-instance", "seeds-pandas")],
                         ids=lambda tools: "-with-".join(tools))
def test_benchmark_runs_every_case_and_writes_results(tools, tmp_path, capsys,
                                                       postgres_admin_url):
    out = tmp_path / "results"
    peer = tools[1]
    assert main(["--sizes", "400", "--repeat", "1", "--days", "8", "--out", str(out),
                 "--workdir", str(tmp_path), "--appraisal-rows", "0", "--tools", *tools]) == 0
    result = json.loads((out / "latest-400.json").read_text())
    assert json.loads((out / "latest.json").read_text()) == result
    assert result["source_rows"] == 400
    assert {"cpu", "cpus", "memory_gb", "python", "versions"} <= set(result["machine"])
    cases = {(c["tool"], c["step"]): c for c in result["cases"]}
    assert set(cases) == {(tool, step) for tool in tools for step in TOOL_STEPS[tool]}
    for (tool, step), case in cases.items():
        assert case["outputs"] == OUTPUTS[tool]
        assert case["runs"] == 1 and case["wall_s_median"] > 0 and case["peak_rss_mb"] > 0
        assert case["rows"] > 0 and case["rows_per_s"] > 0
        if tool != peer and step in TOOL_STEPS[peer]:  # a ratio wherever the peer has the step
            assert case[f"x_vs_{peer}"] > 0
    assert f"| {tools[0]} | incremental |" in capsys.readouterr().out
    assert not (out / "appraisal-latest.json").exists()  # not asked for


def test_appraisal_benchmark_imports_with_every_tool_into_every_database(
        tmp_path, capsys, postgres_admin_url):
    """The appraisal step on its own (no sync sizes), so the two halves of the benchmark
    run side by side on the suite's workers."""
    out = tmp_path / "results"
    assert main(["--sizes", "--repeat", "1", "--out", str(out), "--workdir", str(tmp_path),
                 "--appraisal-rows", "500"]) == 0
    imported = json.loads((out / "appraisal-latest.json").read_text())
    assert imported["rows"] == 500 and {"cpu", "versions"} <= set(imported["machine"])
    assert not imported["skipped"]  # PostgreSQL runs here (conftest starts it)
    assert {(c["tool"], c["target"]) for c in imported["cases"]} == {
        (tool, target) for tool in appraisal.TOOLS for target in appraisal.TARGETS}
    ours = [c for c in imported["cases"] if c["tool"] == "appraisal-countysync"]
    assert all(c["x_vs_appraisal-per-row"] > 0 and c["peak_rss_mb"] > 0 for c in ours)
    assert "| appraisal-countysync | postgresql |" in capsys.readouterr().out
    assert not list(out.glob("latest-*.json"))  # no sync size was asked for


def test_report_shows_how_each_case_grows_with_the_table(tmp_path):
    small = {"source_rows": 100, "cases": [
        {"tool": "countysync", "step": "incremental", "wall_s_median": 2.0, "rows_per_s": 5.0,
         "peak_rss_mb": 300.0}]}
    large = {"source_rows": 1000, "cases": [dict(small["cases"][0], wall_s_median=3.0,
                                                  peak_rss_mb=310.0)]}
    for result in (small, large):
        (tmp_path / f"latest-{result['source_rows']}.json").write_text(json.dumps(result))
    assert "| countysync | incremental | 2.00 → 3.00 | 1.5x | 300 → 310 |" in report(tmp_path)


def test_profile_writes_a_report_for_each_step_asked(tmp_path):
    out = tmp_path / "results"
    assert main(["--profile", "--sizes", "300", "--days", "8", "--out", str(out),
                 "--workdir", str(tmp_path), "--steps", "incremental", "full"]) == 0
    for step in ("full", "incremental"):
        text = (out / "profiles" / f"300-{step}.txt").read_text()
        assert "benchmarks.case" in text and "case_countysync.py" in text, text[:500]
    assert not (out / "profiles" / "300-backfill.txt").exists()  # not asked for
    assert not list(out.glob("*.json"))  # profiling is not a result
