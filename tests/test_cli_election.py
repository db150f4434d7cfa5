"""`nameplate leader`, `nameplate campaign` and `nameplate semaphore`: real `nameplate` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from nameplate import Registry

NAMEPLATE = [sys.executable, "-m", "nameplate"]


def _run(db_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NAMEPLATE, "--db", str(db_path), *args], capture_output=True, text=True, timeout=timeout)


def _start(db_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*NAMEPLATE, "--db", str(db_path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


_RECORD = "import os, sys, time; print(os.environ['{var}'], os.environ['NAMEPLATE_FENCING_TOKEN'], flush=True); " \
          "time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))"


def test_leader_of_an_election_nobody_leads_exits_3(db_path: Path) -> None:
    result = _run(db_path, "leader", "primary")
    assert result.returncode == 3 and result.stderr == "nameplate: error: nobody leads election 'primary' now\n"


def test_campaign_runs_the_command_as_leader_and_passes_its_exit_code(db_path: Path) -> None:
    leader = _start(db_path, "campaign", "primary", "http://a:8000", "--",
                    sys.executable, "-c", _RECORD.format(var="NAMEPLATE_LEADER_VALUE"), "3", "5")
    try:
        assert leader.stdout is not None
        value, term = leader.stdout.readline().split()
        assert (value, term) == ("http://a:8000", "1")
        shown = json.loads(_run(db_path, "--json", "leader", "primary").stdout)
        assert shown["value"] == "http://a:8000" and shown["term"] == 1 and shown["pid"] == leader.pid
        busy = _run(db_path, "campaign", "primary", "b", "--timeout", "0.2", "--", "true")
        assert busy.returncode == 4 and "not leading election 'primary' after waiting 0.2 s" in busy.stderr
        assert f"led by pid {leader.pid}" in busy.stderr
        assert leader.wait(timeout=60) == 5
    finally:
        if leader.poll() is None:
            leader.kill()
        leader.communicate(timeout=60)
    assert _run(db_path, "leader", "primary").returncode == 3  # the leadership ended with the command


def test_leader_watch_prints_each_new_leader(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        first = registry.campaign("primary", "a")
        watcher = _start(db_path, "--json", "leader", "primary", "--watch", "--count", "2", "--timeout", "30")
        try:
            assert watcher.stdout is not None
            seen = [json.loads(watcher.stdout.readline())]
            first.resign()
            with registry.campaign("primary", "b"):
                out, _ = watcher.communicate(timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate(timeout=60)
    seen += [json.loads(line) for line in out.splitlines()]
    assert [(s["value"], s["term"]) for s in seen] == [("a", 1), ("b", 2)] and watcher.returncode == 0


def test_semaphore_runs_at_most_limit_commands_at_once(db_path: Path) -> None:
    holders = [_start(db_path, "semaphore", "gpu", "--limit", "2", "--",
                      sys.executable, "-c", _RECORD.format(var="NAMEPLATE_SEMAPHORE_SLOT"), "30", "0")
               for _ in range(2)]
    try:
        slots = []
        for holder in holders:
            assert holder.stdout is not None
            slots.append(holder.stdout.readline().split()[0])
        assert sorted(slots) == ["gpu#1", "gpu#2"]
        busy = _run(db_path, "semaphore", "gpu", "-n", "2", "--", "true")
        assert busy.returncode == 4, busy.stderr
        assert "all 2 slots of semaphore 'gpu' are taken" in busy.stderr and "--wait SECONDS" in busy.stderr
        assert "wait=" not in busy.stderr
        conflict = _run(db_path, "semaphore", "gpu", "-n", "3", "--", "true")
        assert conflict.returncode == 4 and "has limit 2, not 3" in conflict.stderr
        holders[0].kill()  # kill -9 of `nameplate semaphore`: its slot is free at once
        holders[0].communicate(timeout=60)
        started = time.monotonic()
        waited = _run(db_path, "semaphore", "gpu", "-n", "2", "--wait", "20", "--", sys.executable, "-c",
                      "import os; print(os.environ['NAMEPLATE_SEMAPHORE_SLOT'])")
        assert waited.returncode == 0 and waited.stdout.strip() == slots[0] and time.monotonic() - started < 20
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.kill()
            holder.communicate(timeout=60)
    with Registry(db_path) as registry:
        registry.reap()  # the killed holders' sessions, proven dead
        assert registry.locks() == []
