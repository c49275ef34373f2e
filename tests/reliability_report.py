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
COLUMNS = ["suite", "case", "trials", "killed_mid_run", "automatic_recoveries",
           "manual_repairs", "orphan_runs_left", "temp_bytes_left", "corrupt_files",
           "lost_or_extra_rows", "password_leaks", "outcome"]


def table(rows: list[dict]) -> str:
    present = [c for c in COLUMNS if any(c in row for row in rows)]
    lines = ["| " + " | ".join(c.replace("_", " ") for c in present) + " |",
             "|" + "---|" * len(present)]
    for row in sorted(rows, key=lambda r: (r["suite"], r["case"])):
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in present) + " |")
    return "\n".join(lines)


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
