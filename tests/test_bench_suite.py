"""The benchmark suite's plumbing (``python -m bench``): figures, targets, the table and RESULTS.md; never times."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import make_figure, met  # noqa: E402
from bench.__main__ import Bench, Outcome, parse, run_bench, table_rows, text_table, write_results  # noqa: E402


def figure_line(name: str, value: float, unit: str, **details: object) -> str:
    return json.dumps(make_figure(name, value, unit, **details))


def test_targets_test_the_value_or_the_ratio_and_anything_else_is_unknown():
    assert met(">= 100", 120, None) is True
    assert met("< 10", 12.5, None) is False
    assert met("ratio >= 0.5", 10, 0.4) is False
    assert met("ratio <= 1.5", 10, 1.2) is True
    assert met("ratio >= 1", 10, None) is None
    assert met("p95 < 250 ms", 120, None) is True
    assert met("well under 380 ms", 100, None) is None
    assert met(None, 1, 1) is None


def test_the_table_hides_baseline_only_figures_and_compares_them_across_benches():
    # given the runtime bench's throughput and the RQ bench's baselines, as their --json lines
    runtime = Bench("runtime", "runtime.py", "r")
    rq = Bench("rq", "rq_baseline.py", "q")
    ours = "human line\n" + figure_line("no-op runs/s", 150.0, "runs/s", key="throughput.one_worker",
                                        baseline="spawn loop", baseline_value=200.0, target="ratio >= 0.5")
    theirs = "\n".join([figure_line("RQ function", 300.0, "jobs/s", key="rq.function"),
                        figure_line("RQ spawn", 100.0, "jobs/s", key="rq.spawn"), '{"figure": cut off'])
    outcomes = [Outcome(runtime, [], figures=parse(runtime, ours)), Outcome(rq, [], figures=parse(rq, theirs))]
    # when the table is made
    rows = table_rows(outcomes)
    # then the RQ figures appear only as baselines of the cross-bench rows, with ratios and verdicts
    by_name = {row["figure"]: row for row in rows}
    assert "RQ function" not in by_name and "RQ spawn" not in by_name
    assert by_name["no-op runs/s"]["ratio"] == 0.75 and by_name["no-op runs/s"]["met"] is True
    against_function = next(r for r in rows if r["key"] == "throughput.one_worker~rq.function")
    assert (against_function["ratio"], against_function["met"]) == (0.5, False)
    against_spawn = next(r for r in rows if r["key"] == "throughput.one_worker~rq.spawn")
    assert (against_spawn["ratio"], against_spawn["met"]) == (1.5, True)
    table = text_table(rows)
    assert "RQ function: 300 jobs/s" in table and "NO" in table and "yes" in table


def test_a_bench_printing_its_own_json_lines_gets_keys_ratios_and_verdicts():
    bench = Bench("live_fanout", "live_fanout.py", "l")
    line = json.dumps({"figure": "p95 chunk latency", "value": 60.0, "unit": "ms", "baseline": "polling",
                       "baseline_value": 240.0, "ratio": 0.25, "target": "p95 < 250 ms"})
    [found] = parse(bench, line + '\n{"figure": 3}\n')
    assert (found["key"], found["ratio"], found["met"]) == ("p95 chunk latency", 0.25, True)


def test_footprint_text_output_becomes_figures():
    bench = Bench("footprint", "footprint.py", "f", json=False)
    output = ("  total   120.5    80.2  (5 processes; target < 150 MB RSS)\n"
              "  python -c 'import pymongo, flask'         210 ms    30.0 MB\n"
              "  sooner jobs                               300 ms    40.0 MB\n")
    figures = {f["key"]: f for f in parse(bench, output)}
    assert figures["footprint.up_rss"]["value"] == 120.5 and figures["footprint.up_rss"]["met"] is True
    assert figures["footprint.jobs_ms"]["baseline_value"] == 210.0
    # the later format, with a CPU column
    later = output.replace("210 ms ", "210 ms  40 ms ").replace("300 ms ", "300 ms  90 ms ")
    figures = {f["key"]: f for f in parse(bench, later)}
    assert figures["footprint.jobs_ms"]["value"] == 300.0 and figures["footprint.jobs_ms"]["note"] == "CPU 90 ms"


def test_a_failing_bench_becomes_a_row_and_its_figures_so_far_are_kept(tmp_path):
    # given a bench that prints one figure and then fails
    script = tmp_path / "broken.py"
    script.write_text("import json, sys\n"
                      f"print({figure_line('half done', 1.0, 'x')!r})\n"
                      "sys.exit('the database went away')\n")
    bench = Bench("broken", str(script), "fails on purpose")
    # when the suite runs it (a real subprocess)
    outcome = run_bench(bench, quick=False, timeout_s=60)
    # then the failure is recorded with its message, and the figure it printed still counts
    assert outcome.problem is not None and "exit 1" in outcome.problem and "database went away" in outcome.problem
    assert [f["figure"] for f in outcome.figures] == ["half done"]
    rows = table_rows([outcome])
    assert any("[broken] exit 1" in row["figure"] for row in rows)


def test_results_name_the_command_the_machine_and_the_load(tmp_path):
    bench = Bench("runtime", "runtime.py", "what it measures")
    outcome = Outcome(bench, ["python", str(ROOT / "bench" / "runtime.py"), "--json"], output="1. human figure\n",
                      figures=[make_figure("no-op runs/s", 150.0, "runs/s", note="CPU 1 s")], seconds=3)
    path = tmp_path / "RESULTS.md"
    write_results(path, "python -m bench --quick", datetime(2026, 12, 2, tzinfo=timezone.utc),
                  {"CPU": "Test CPU, 2 logical cores", "pymongo": "4.20"}, ("1.00 1.00 1.00", "2.00 1.50 1.00"),
                  [outcome], table_rows([outcome]))
    text = path.read_text()
    assert "`python -m bench --quick`" in text and "Test CPU, 2 logical cores" in text
    assert "before 1.00 1.00 1.00, after 2.00 1.50 1.00" in text
    assert "| no-op runs/s | 150 runs/s |" in text and "no-op runs/s: CPU 1 s" in text
    assert "`python bench/runtime.py --json`" in text and "1. human figure" in text
