"""`countysync check`: one line per thing a sync needs, exit code 2 when any is wrong, and the
message, never a traceback (run as a user runs it, in its own process)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

COUNTYSYNC = str(Path(sys.executable).parent / "countysync")


def check(tmp_path, **settings) -> subprocess.CompletedProcess:
    return subprocess.run([COUNTYSYNC, "check"], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(COUNTYSYNC_EXPORT_DIR=str(tmp_path / "out"), **settings),
                          timeout=120)


def test_a_working_setup_passes_every_check(tmp_path, demo_url):
    done = check(tmp_path, COUNTYSYNC_SOURCE_URL=demo_url)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:4] for line in lines] == ["ok  "] * 4
    assert "has 2,000 rows" in lines[1] and "Warning" not in done.stderr


@pytest.mark.parametrize("settings, says", [
    ({"COUNTYSYNC_SOURCE_URL": "sqlite:///data/demo_sorce.sqlite"},
     "FAIL source: The SQLite source data/demo_sorce.sqlite does not exist"),
    ({"COUNTYSYNC_FORMATS": '{"workng": ["csv"]}'},
     "FAIL configuration: COUNTYSYNC_FORMATS names asset 'workng', which does not exist"),
    ({"COUNTYSYNC_PARTITION_GRANULARITY": "weekly"}, "FAIL configuration: "),
])
def test_a_mistake_is_one_line_and_exit_code_2(tmp_path, settings, says):
    done = check(tmp_path, **settings)
    assert done.returncode == 2
    assert any(line.startswith(says) for line in done.stdout.splitlines()), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()  # the misspelt source was not created
