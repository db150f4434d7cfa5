"""nameplate.compat.processes against seed 004 (the in-memory process registry): its usage examples
line by line, then what it lacked (persistence, status and health, dead processes noticed) with real
processes."""

from __future__ import annotations

import enum
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nameplate import Registry
from nameplate.compat import processes as compat
from nameplate.compat.processes import ProcessIdTakenError, ProcessRecord, ProcessRegistry

from conftest import run_processes, wait_until


class ParallelTrainingCoordinator:
    """The seed's long-running training task, with the small protocol the registry polls."""

    def __init__(self, epochs: int = 10) -> None:
        self.epochs = epochs
        self.done = 0

    def status(self) -> str:
        return "finished" if self.done >= self.epochs else "training"

    def progress(self) -> float:
        return self.done / self.epochs


@pytest.fixture
def processes(registry: Registry) -> ProcessRegistry:
    return ProcessRegistry(registry)


def test_the_seeds_usage_examples(processes: ProcessRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    # register_process
    process_id = "training_run_001"
    my_training_process = ParallelTrainingCoordinator()
    assert processes.register_process(process_id, my_training_process) is None

    # get_process
    process = processes.get_process("training_run_001")
    if process:
        assert process is my_training_process  # interact with the process object

    # list_processes
    active_processes = processes.list_processes()
    print(f"Active processes: {active_processes}")

    # get_all_processes
    all_procs = processes.get_all_processes()
    for pid, proc_obj in all_procs.items():
        print(f"Process ID: {pid}, Object: {type(proc_obj).__name__}")

    # unregister_process
    if processes.unregister_process("training_run_001"):
        print("Process unregistered successfully.")
    else:
        print("Process not found.")
    if processes.unregister_process("training_run_001"):
        print("Process unregistered successfully.")
    else:
        print("Process not found.")

    # clear_registry
    processes.register_process("a", ParallelTrainingCoordinator())
    processes.register_process("b", ParallelTrainingCoordinator())
    num_removed = processes.clear_registry()
    print(f"Removed {num_removed} processes from the registry.")

    assert capsys.readouterr().out.splitlines() == [
        "Active processes: ['training_run_001']",
        "Process ID: training_run_001, Object: ParallelTrainingCoordinator",
        "Process unregistered successfully.",
        "Process not found.",
        "Removed 2 processes from the registry.",
    ]
    assert processes.get_process("training_run_001") is None
    assert processes.list_processes() == [] and processes.get_all_processes() == {}
    assert processes.clear_registry() == 0


def test_module_level_functions(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(db_path))
    try:
        job = ParallelTrainingCoordinator()
        compat.register_process("training_run_001", job)
        assert compat.get_process("training_run_001") is job
        assert compat.list_processes() == ["training_run_001"]
        assert compat.get_all_processes() == {"training_run_001": job}
        record = compat.get_record("training_run_001")
        assert record is not None and (record.status, record.progress, record.health) == ("training", 0.0, "healthy")
        assert compat.remove_dead() == []
        assert compat.unregister_process("training_run_001") and compat.clear_registry() == 0
    finally:
        compat.default_registry().close()


def test_registering_again_from_this_process_replaces_the_object(processes: ProcessRegistry) -> None:
    first, second = ParallelTrainingCoordinator(), ParallelTrainingCoordinator(epochs=2)
    processes.register_process("job", first)
    entry_id = processes.registry.lookup("job", "process")
    processes.register_process("job", second)
    assert processes.get_process("job") is second and processes.registry.lookup("job", "process") == entry_id


def test_status_and_health_are_polled_on_the_heartbeat(db_path: Path) -> None:
    class Phase(enum.Enum):
        LOADING = "loading"

    class Flaky:
        broken = False

        def status(self) -> Phase:
            if self.broken:
                raise RuntimeError("coordinator lost its workers")
            return Phase.LOADING

        def health(self) -> str:
            return "degraded"

    job, flaky = ParallelTrainingCoordinator(epochs=4), Flaky()
    with _closing(db_path) as processes:
        processes.register_process("job", job)
        processes.register_process("flaky", flaky)
        flaky_record = processes.get_record("flaky")
        assert flaky_record is not None and (flaky_record.status, flaky_record.health) == ("loading", "degraded")
        job.done = 4
        assert wait_until(lambda: _status(processes, "job") == ("finished", 1.0))
        flaky.broken = True
        assert wait_until(lambda: _health(processes, "flaky") == "critical")
        broken = processes.get_record("flaky")
        assert broken is not None and "coordinator lost its workers" in broken.info["error"]


class _closing:
    """A ProcessRegistry with a short ttl (a beat every 0.5 s), closed at the end."""

    def __init__(self, db_path: Path) -> None:
        self.processes = ProcessRegistry(Registry(db_path, ttl=1.5))

    def __enter__(self) -> ProcessRegistry:
        return self.processes

    def __exit__(self, *exc_info: object) -> None:
        self.processes.close()


def _status(processes: ProcessRegistry, process_id: str) -> tuple[Any, Any]:
    record = processes.get_record(process_id)
    return (None, None) if record is None else (record.status, record.progress)


def _health(processes: ProcessRegistry, process_id: str) -> str | None:
    record = processes.get_record(process_id)
    return None if record is None else record.health


@pytest.mark.sqlite_only  # counts SQLite's traced statements
def test_clear_registry_is_one_transaction(processes: ProcessRegistry) -> None:
    for index in range(5):
        processes.register_process(f"job{index}", ParallelTrainingCoordinator())
    processes.registry.resolve("lh1", "node")
    statements: list[str] = []
    conn = processes.registry._backend.connection()
    conn.set_trace_callback(statements.append)
    try:
        assert processes.clear_registry() == 5
    finally:
        conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1, statements
    assert processes.registry.lookup("lh1", "node") is not None  # only process records go


def test_threads_registering_at_once(processes: ProcessRegistry) -> None:
    jobs = {f"job{i}": ParallelTrainingCoordinator() for i in range(8)}
    threads = [threading.Thread(target=processes.register_process, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert processes.get_all_processes() == jobs


# -- several processes -----------------------------------------------------------------------------

_REGISTERING = """
import sys, time
from pathlib import Path
from nameplate import Registry
from nameplate.compat.processes import ProcessRegistry

class Job:
    def status(self):
        return Path(sys.argv[3]).read_text()
    def progress(self):
        return {"epoch": 3, "of": 10}

processes = ProcessRegistry(Registry(sys.argv[1], ttl=float(sys.argv[4])))
job = Job()
processes.register_process(sys.argv[2], job)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        child.kill()
        child.wait(timeout=60)
        if child.stdout is not None:
            child.stdout.close()


def _register_in_child(children: list[subprocess.Popen[str]], db_path: Path, process_id: str, status_file: Path,
                       ttl: float = 60.0) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _REGISTERING, str(db_path), process_id, str(status_file),
                              str(ttl)], stdout=subprocess.PIPE, text=True)
    children.append(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_a_record_registered_in_one_process_is_seen_in_another(processes: ProcessRegistry, db_path: Path,
                                                               tmp_path: Path,
                                                               children: list[subprocess.Popen[str]]) -> None:
    status_file = tmp_path / "status"
    status_file.write_text("epoch 3")
    child = _register_in_child(children, db_path, "training_run_001", status_file, ttl=1.5)
    record = processes.get_process("training_run_001")
    assert isinstance(record, ProcessRecord)  # the object stays in its process; here: its record
    assert (record.pid, record.alive, record.state) == (child.pid, True, "live")
    assert (record.status, record.progress, record.health) == ("epoch 3", {"epoch": 3, "of": 10}, "healthy")
    assert record.object_type == "__main__.Job"
    assert processes.list_processes() == ["training_run_001"]
    assert processes.get_all_processes() == {"training_run_001": record}
    status_file.write_text("epoch 4")  # polled on the child's heartbeat
    assert wait_until(lambda: _status(processes, "training_run_001")[0] == "epoch 4")


def test_a_killed_process_is_noticed_as_dead_at_once(processes: ProcessRegistry, db_path: Path, tmp_path: Path,
                                                     children: list[subprocess.Popen[str]]) -> None:
    status_file = tmp_path / "status"
    status_file.write_text("training")
    child = _register_in_child(children, db_path, "training_run_001", status_file)  # ttl 60 s
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    record = processes.get_process("training_run_001")
    assert isinstance(record, ProcessRecord)
    assert (record.alive, record.state, record.pid) == (False, "dead", child.pid)
    assert record.status == "training"  # its last word stays readable
    assert processes.remove_dead() == ["training_run_001"] and processes.list_processes() == []


def test_an_id_held_by_a_live_process_is_refused_and_taken_over_once_it_died(
        processes: ProcessRegistry, db_path: Path, tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    status_file = tmp_path / "status"
    status_file.write_text("training")
    child = _register_in_child(children, db_path, "training_run_001", status_file)
    mine = ParallelTrainingCoordinator()
    with pytest.raises(ProcessIdTakenError, match=f"pid {child.pid}"):
        processes.register_process("training_run_001", mine)
    child.kill()
    child.wait(timeout=30)
    processes.register_process("training_run_001", mine)
    assert processes.get_process("training_run_001") is mine


def test_a_closed_process_leaves_its_record_marked_closed(db_path: Path) -> None:
    with _closing(db_path) as first:
        first.register_process("nightly", ParallelTrainingCoordinator())
    with _closing(db_path) as later:
        record = later.get_process("nightly")
        assert isinstance(record, ProcessRecord) and (record.alive, record.state) == (False, "closed")
        assert record.status == "training"


def _register_same_id(barrier: Any, results: Any, index: int, path: str) -> None:
    try:
        processes = ProcessRegistry(Registry(path))
        barrier.wait()
        try:
            processes.register_process("shared_run", ParallelTrainingCoordinator())
            outcome = "registered"
        except ProcessIdTakenError:
            outcome = "taken"
        results.put((index, outcome))
        barrier.wait()  # every one stays alive until all have tried
        processes.close()
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((index, ("error", repr(error))))


def test_8_processes_registering_one_id_at_once_one_wins(db_path: Path) -> None:
    Registry(db_path).close()
    outcomes = run_processes(_register_same_id, [(str(db_path),)] * 8)
    assert sorted(outcomes) == ["registered"] + ["taken"] * 7, outcomes
