"""`nameplate lock NAME -- COMMAND`: real `nameplate` processes running real commands.

Each command is a small Python script that records what it saw in files under tmp_path, so the
assertions are about what happened, never about how long it took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nameplate import Registry

from conftest import wait_until

NAMEPLATE = [sys.executable, "-m", "nameplate"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def lock(db_path: Path) -> Iterator[object]:
    """Start `nameplate --db DB lock ...` processes; every one still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([*NAMEPLATE, "--db", str(db_path), "lock", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_the_command_gets_token_and_id_and_its_exit_code_is_passed_through(lock, db_path: Path,  # type: ignore[no-untyped-def]
                                                                            tmp_path: Path) -> None:
    show = script(tmp_path, "show", """
        import json, os, sys
        print(json.dumps({k: os.environ[k] for k in ("NAMEPLATE_FENCING_TOKEN", "NAMEPLATE_ENTRY_ID")}))
        sys.exit(int(sys.argv[1]))
    """)
    first = lock("nightly", "--kind", "process", "--", *show, "7")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 7, err
    seen = json.loads(out)
    with Registry(db_path) as registry:
        assert seen["NAMEPLATE_ENTRY_ID"] == registry.lookup("nightly", "process")
        assert registry.locks() == []  # released when the command exited
    second = lock("nightly", "--", *show, "0")  # the entry exists now: no --kind needed
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out)["NAMEPLATE_FENCING_TOKEN"] == str(int(seen["NAMEPLATE_FENCING_TOKEN"]) + 1)


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(lock) -> None:  # type: ignore[no-untyped-def]
    killed = lock("job", "-k", "process", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)")
    killed.communicate(timeout=60)
    assert killed.returncode == 128 + signal.SIGKILL


def test_two_runs_on_one_name_never_overlap(lock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inside = tmp_path / "inside"
    journal = tmp_path / "journal"
    critical = script(tmp_path, "critical", f"""
        import os, sys, time
        with open({str(journal)!r}, "a") as out:
            out.write("enter " + sys.argv[1] + "\\n")
        try:
            fd = os.open({str(inside)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another is inside
        except FileExistsError:
            sys.exit(99)
        os.write(fd, sys.argv[1].encode())
        time.sleep(0.2)
        os.close(fd)
        os.unlink({str(inside)!r})
        with open({str(journal)!r}, "a") as out:
            out.write("leave " + sys.argv[1] + "\\n")
    """)
    runs = [lock("shared_robot", "-k", "node", "--wait", "120", "--", *critical, str(i)) for i in range(4)]
    results = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], results
    lines = journal.read_text().split()
    events = list(zip(lines[0::2], lines[1::2], strict=True))
    assert len(events) == 8
    for (enter, who), (leave, same) in zip(events[0::2], events[1::2], strict=True):  # strictly enter/leave pairs
        assert (enter, leave, who) == ("enter", "leave", same), events


def test_a_killed_holder_frees_the_lease_at_once(lock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ready = tmp_path / "ready"
    hold = script(tmp_path, "hold", f"""
        import os, time
        open({str(ready)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    # A ttl of 10 minutes: if the next run gets the lease, it is because the holder is proven dead.
    holder = lock("balance", "-k", "node", "--ttl", "600", "--", *hold)
    assert wait_until(lambda: ready.exists() and ready.read_text() != "", timeout=60), holder.stderr
    command_pid = int(ready.read_text())
    busy = lock("balance", "-k", "node", "--", sys.executable, "-c", "pass")
    _, err = busy.communicate(timeout=60)
    assert busy.returncode == 4 and "--wait SECONDS" in err and "wait=" not in err, err
    holder.kill()
    holder.communicate(timeout=60)
    after = lock("balance", "-k", "node", "--", sys.executable, "-c", "pass")
    _, err = after.communicate(timeout=60)
    assert after.returncode == 0, err
    # Unguarded, the command of the killed holder must not go on: the kernel ended it with its parent.
    assert wait_until(lambda: gone(command_pid), timeout=30)


@pytest.mark.parametrize("on_term", ["exit", "ignore"])
def test_a_forced_release_stops_the_command(lock, db_path: Path, tmp_path: Path, on_term: str) -> None:  # type: ignore[no-untyped-def]
    ready = tmp_path / "ready"
    record = tmp_path / "record"
    handler = "sys.exit(0)" if on_term == "exit" else "None"
    hold = script(tmp_path, "hold", f"""
        import os, signal, sys, time
        def on_term(signum, frame):
            open({str(record)!r}, "a").write("TERM\\n")
            {handler}
        signal.signal(signal.SIGTERM, on_term)
        open({str(ready)!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.05)
    """)
    holder = lock("balance", "-k", "node", "--ttl", "1.5", "--grace", "1", "--", *hold)
    assert wait_until(lambda: ready.exists() and ready.read_text() != "", timeout=60)
    command_pid = int(ready.read_text())
    released = subprocess.run([*NAMEPLATE, "--db", str(db_path), "release", "balance", "-k", "node", "--force"],
                              capture_output=True, text=True, timeout=60)
    assert released.returncode == 0, released.stderr
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 8, err
    assert err.startswith("nameplate: error: the lease on node 'balance'") and err.count("\n") == 1
    assert record.read_text() == "TERM\n"  # asked politely first, in both cases
    assert ("SIGKILL" in err) == (on_term == "ignore")
    assert gone(command_pid)


def test_sigint_to_nameplate_lock_reaches_the_command(lock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ready = tmp_path / "ready"
    hold = script(tmp_path, "hold", f"""
        import signal, sys, time
        signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(42))
        open({str(ready)!r}, "w").write("ready")
        time.sleep(600)
    """)
    holder = lock("balance", "-k", "node", "--", *hold)
    assert wait_until(ready.exists, timeout=60)
    os.kill(holder.pid, signal.SIGINT)
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 42, err


def test_a_command_that_cannot_run_takes_no_lease(lock, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = lock("job", "-k", "process", "--", "no-such-command-anywhere")
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 127 and err == "nameplate: error: cannot run 'no-such-command-anywhere': " \
                                               "not found on PATH\n"
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    refused = lock("job", "-k", "process", "--", str(plain))
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 126 and "not an executable file" in err
    with Registry(db_url) as registry:
        assert registry.lookup("job", "process") is None  # nothing created, nothing leased


def test_a_missing_name_without_kind_is_a_one_line_error(lock) -> None:  # type: ignore[no-untyped-def]
    run = lock("never_made", "--", sys.executable, "-c", "pass")
    _, err = run.communicate(timeout=60)
    assert run.returncode == 3 and "pass --kind KIND to create it" in err and err.count("\n") == 1
