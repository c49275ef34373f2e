"""The README's Reliability table, from the figures the fault suite records.

``scripts/reliability.sh`` runs ``pytest -m faults`` with COUNTYSYNC_RELIABILITY_REPORT set;
at the end of the session the rows go to ``benchmarks/results/reliability.json`` and the table
between the README's reliability markers is written anew.
"""

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
KILL_COLUMNS = ["case", "trials", "killed_mid_run", "automatic_recoveries", "manual_repairs",
                "orphan_runs_left", "temp_bytes_left", "corrupt_files", "lost_or_extra_rows"]


def markdown(columns: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def table(rows: list[dict]) -> str:
    """The kill -9 trials with their figures, then every other fault and its outcome."""
    rows = sorted(rows, key=lambda r: (r["suite"], r["case"]))
    kills = [r for r in rows if r["suite"] == "kill -9"]
    others = [dict(r, outcome="; ".join(filter(None, [r.get("outcome")] + [
        f"{k.replace('_', ' ')}: {v}" for k, v in r.items()
        if k not in ("suite", "case", "trials", "outcome")]))) for r in rows if r not in kills]
    return "\n".join(["kill -9 at a random moment of a run, then unattended recovery:", "",
                      *markdown(KILL_COLUMNS, kills), "", "The other faults:", "",
                      *markdown(["suite", "case", "trials", "outcome"], others)])


def write_report(rows: list[dict], passed: bool) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (ROOT / "benchmarks" / "results" / "reliability.json").write_text(json.dumps(
        {"when": when, "commit": commit, "machine": platform.platform(), "passed": passed,
         "rows": rows}, indent=1, default=str))
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text:
        return
    verdict = "all passed" if passed else "NOT ALL PASSED"
    body = (f"{START}\nMeasured {when} at commit {commit} ({verdict}) by "
            f"`bash scripts/reliability.sh`:\n\n{table(rows)}\n{END}")
    head, rest = text.split(START, 1)
    readme.write_text(head + body + rest.split(END, 1)[1])
