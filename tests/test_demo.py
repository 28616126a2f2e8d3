"""`badnet-prune demo`, the first command a new user runs, through the console script: the defense on the
embedded default and a report, ending with where the results are and the commands that reach them.

The synthetic BadNet is the test suite's (the demo reuses one it finds in its folder), so the test
times the defense and the report, not training.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from tests.helpers import run_cli, run_console_script


def test_the_demo_defends_reports_and_says_how_to_reach_its_results(synthetic_badnet, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(synthetic_badnet, out / "badnet")
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}
    env.pop("BADNET_PRUNE_BROKER", None)
    result = run_console_script("demo", "--out", str(out), "--quick", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the synthetic BadNet" in result.stderr
    summary = json.loads((out / "defense" / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "done" and summary["thresholds"], summary
    assert (out / "report" / "index.html").exists()
    match = re.search(r"the demo's results are sweep (\d+) in (\S+); to see them again:", result.stderr)
    assert match, result.stderr[-2000:]
    assert f"status {match.group(1)} --db {match.group(2)}" in result.stderr
    status = run_console_script("status", match.group(1), "--json", "--db", match.group(2), env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "done", status.stderr
    # the suggested query reads this sweep's rows only (a second demo in the folder adds another sweep's)
    query = re.search(r'sql "(SELECT [^"]*)"', result.stderr)
    assert query and query.group(1).endswith(f"WHERE sweep_id = {match.group(1)}"), result.stderr[-2000:]
    rows = run_cli("sql", query.group(1), "--db", match.group(2), env=env)
    assert rows.returncode == 0 and "G" in rows.stdout, rows.stderr
