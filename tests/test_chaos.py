"""The chaos run (``scripts/chaos.py``): real workers, SIGKILL and SIGSTOP, and a checker that holds the
database, the event log and the workers' logs against each other.

A short run must find nothing; a run whose workers skip the fencing-token check, or the lease guard of
entry writes, must be caught by the check that guards that very mechanism. Each run is a subprocess
with a fixed seed; the kill timing still varies between runs, so the sabotaged ones get two rounds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chaos.py"
SUMMARY = re.compile(r"^rounds=(\d+) kills=(\d+) ops=(\d+) violations=(\d+)$")
#: A short run takes about 5 s on 2 cores; this leaves room for a slow machine, not for a hang.
RUN_TIMEOUT = 45.0


@dataclass(frozen=True)
class ChaosRun:
    returncode: int
    rounds: int
    kills: int
    ops: int
    violations: int
    violation_lines: list[str]
    output: str

    def checks_failed(self) -> set[str]:
        return {m.group(1) for line in self.violation_lines if (m := re.search(r" check=(\w+) ", line))}


def run_chaos(tmp_path: Path, *options: str, rounds: int = 1) -> ChaosRun:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", str(rounds), "--workers", "3", "--kills", "10", "--seed", "7",
         "--db", str(tmp_path / "chaos"), *options],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    lines = completed.stdout.strip().splitlines()
    summary = SUMMARY.match(lines[-1]) if lines else None
    assert summary is not None, f"the last line of stdout is not the summary line\n{output}"
    rounds_done, kills, ops, violations = map(int, summary.groups())
    violation_lines = [line for line in lines[:-1] if line.startswith("VIOLATION ")]
    assert len(violation_lines) == violations, f"one VIOLATION line per counted violation\n{output}"
    return ChaosRun(completed.returncode, rounds_done, kills, ops, violations, violation_lines, output)


def test_a_short_chaos_run_finds_no_violation(tmp_path: Path) -> None:
    run = run_chaos(tmp_path)

    assert run.violations == 0, run.output
    assert run.returncode == 0, run.output
    assert (run.rounds, run.kills) == (1, 10), run.output
    assert run.ops > 100, f"the workers hardly did anything\n{run.output}"


@pytest.mark.parametrize(("sabotage", "check"), [
    ("fence", "6"),  # stale fenced writes land: "no fenced write with a stale token"
    ("guard", "7"),  # non-holders write leased entries: "leases are respected"
])
def test_a_sabotaged_run_is_caught_by_the_check_for_what_was_broken(tmp_path: Path, sabotage: str,
                                                                     check: str) -> None:
    run = run_chaos(tmp_path, "--sabotage", sabotage, rounds=2)

    assert run.returncode == 1, run.output
    assert run.violations > 0, run.output
    # Violations of other checks would pass this test even if the sabotage did nothing.
    assert check in run.checks_failed(), run.output
