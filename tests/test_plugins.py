"""Plugins: decorator registration, load_all with recorded load errors, discovery that notices uninstalls.

Distributions are real: a ``*.dist-info`` directory with ``METADATA`` and ``entry_points.txt`` on
``sys.path``, which ``importlib.metadata`` reads as it reads pip's. Several processes are real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nameplate import (
    EntryNotFoundError,
    LeaseHeldError,
    NameTakenError,
    NotImportableError,
    Registry,
    TargetImportError,
    UnknownKindError,
)
from nameplate.cli import main

from conftest import run_processes, table_snapshot, wait_until

GROUP = "nameplate.components"


def _child_env(path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("NAMEPLATE_WORKSPACE", None)
    return env


def _run(code: str, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for throwaway modules and distributions."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    before = set(sys.modules)
    yield path
    for name in set(sys.modules) - before:
        if name.startswith("np_"):
            module = sys.modules.pop(name)
            opened = getattr(module, "registry", None)
            if isinstance(opened, Registry):
                opened.close()


def install(site: Path, name: str, version: str, points: dict[str, str], group: str = GROUP) -> Path:
    """Install (or reinstall) distribution ``name`` at ``version`` declaring ``points`` in ``group``."""
    uninstall(site, name)
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{point} = {value}\n" for point, value in points.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    return dist


def uninstall(site: Path, name: str) -> None:
    for dist in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
        shutil.rmtree(dist)


def module(site: Path, name: str, source: str) -> None:
    (site / f"{name}.py").write_text(textwrap.dedent(source))


# -- registrar ---------------------------------------------------------------------------------------------

_STEPS = """
    import os
    from nameplate import Registry

    registry = Registry(os.environ["NP_TEST_DB"])

    @registry.registrar("builder", capabilities=["tokens"])
    class Tokenizer:
        class Config:
            pass

    @registry.registrar("builder", "split_words", metadata={"since": 2})
    def split(text):
        return text.split()
"""

_CHILD_LOADS = """
import sys
from nameplate import Registry
with Registry(sys.argv[1]) as registry:
    tokenizer = registry.load("Tokenizer", "builder")
    split = registry.load("split_words", "builder")
    print(tokenizer.__module__, tokenizer.__qualname__, split("a b c"))
"""


def test_registrar_registers_the_dotted_path_and_load_returns_the_very_object(
        site: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NP_TEST_DB", str(db_path))
    module(site, "np_steps", _STEPS)
    import np_steps  # type: ignore[import-not-found]

    registry = np_steps.registry
    tokenizer = registry.get("Tokenizer", "builder")
    assert tokenizer is not None and tokenizer.target == "np_steps:Tokenizer"
    assert tokenizer.capabilities == {"tokens"}
    split = registry.get("split_words", "builder")
    assert split is not None and split.target == "np_steps:split" and split.metadata == {"since": 2}
    assert registry.load("Tokenizer", "builder") is np_steps.Tokenizer
    assert registry.load("split_words", "builder") is np_steps.split
    assert [e.name for e in registry.find("builder", ["tokens"])] == ["Tokenizer"]
    # Another process imports the module by the stored path; its own import registers the same again,
    # which writes nothing.
    before = table_snapshot(db_path)
    child = _run(_CHILD_LOADS, str(db_path), env=_child_env(site, NP_TEST_DB=str(db_path)))
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["np_steps", "Tokenizer", "['a',", "'b',", "'c']"]
    assert table_snapshot(db_path) == before


def test_registrar_refuses_a_second_object_under_the_same_name(registry: Registry, db_path: Path) -> None:
    register = registry.registrar("builder", "dumps")
    assert register(json.dumps) is json.dumps
    before = table_snapshot(db_path)
    assert registry.registrar("builder", "dumps")(json.dumps) is json.dumps  # the same again: nothing written
    assert table_snapshot(db_path) == before
    with pytest.raises(NameTakenError, match="already registered"):
        registry.registrar("builder", "dumps")(json.loads)
    assert table_snapshot(db_path) == before
    assert registry.load("dumps", "builder") is json.dumps
    replaced = registry.registrar("builder", "dumps", on_conflict="replace")(json.loads)
    assert replaced is json.loads and registry.require("dumps", "builder").target == "json:loads"
    assert registry.load("dumps", "builder") is json.loads


def _local_function() -> Any:
    def inner() -> None:
        pass

    return inner


@pytest.mark.parametrize(("make", "message"), [
    (lambda: (lambda: None), "is a lambda or is defined inside a function"),
    (_local_function, "is a lambda or is defined inside a function"),
    (lambda: exec_defined(), "which is not an imported module"),
    (lambda: 42, "has no __module__ and __qualname__"),
    (lambda: json, "is a module; a target is 'module:attribute'"),
])
def test_registrar_refuses_what_other_processes_cannot_import(registry: Registry, db_path: Path, make: Any,
                                                             message: str) -> None:
    before = table_snapshot(db_path)
    with pytest.raises(NotImportableError, match=message) as caught:
        registry.registrar("builder", "thing")(make())
    assert "bind() it for this process only" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert table_snapshot(db_path) == before
    with pytest.raises(EntryNotFoundError):
        registry.load("thing", "builder")


def exec_defined() -> Any:
    namespace: dict[str, Any] = {"__name__": "np_never_imported"}
    exec("def made_by_exec():\n    pass\n", namespace)
    return namespace["made_by_exec"]


def test_registrar_checks_kind_and_name_when_called(registry: Registry, db_path: Path) -> None:
    before = table_snapshot(db_path)
    with pytest.raises(UnknownKindError):
        registry.registrar("no_such_kind")(json.dumps)
    with pytest.raises(ValueError, match="name"):
        registry.registrar("builder", "")
    assert table_snapshot(db_path) == before


_SCRIPT = """
import sys
from nameplate import NotImportableError, Registry

class Local:
    pass

with Registry(sys.argv[1]) as registry:
    try:
        registry.registrar("builder")(Local)
    except NotImportableError as error:
        print("refused:", error)
    else:
        print("registered", registry.require("Local", "builder").target)
"""


def test_a_script_run_as_main_is_refused_and_one_run_with_dash_m_is_registered(site: Path, db_path: Path) -> None:
    (site / "np_script.py").write_text(_SCRIPT)
    as_script = subprocess.run([sys.executable, str(site / "np_script.py"), str(db_path)], capture_output=True,
                               text=True, timeout=60, env=_child_env(site))
    assert "refused:" in as_script.stdout and "script being run (__main__)" in as_script.stdout, as_script.stderr
    as_module = subprocess.run([sys.executable, "-m", "np_script", str(db_path)], capture_output=True, text=True,
                               timeout=60, env=_child_env(site))
    assert as_module.stdout.strip() == "registered np_script:Local", as_module.stderr


# -- load_all and load errors --------------------------------------------------------------------------------


@pytest.fixture
def plugins(site: Path, registry: Registry) -> Registry:
    module(site, "np_good", "class Good:\n    pass\n")
    module(site, "np_raises", "raise RuntimeError('needs a GPU')\n")
    registry.register("good", "provider", target="np_good:Good")
    registry.register("gone", "provider", target="np_not_installed_anywhere:Thing")
    registry.register("raises", "provider", target="np_raises:Thing")
    registry.register("typo", "provider", target="np_good:Goood")
    registry.resolve("identity_only", "provider")  # no target: not a plugin
    registry.resolve("bound_here", "provider")
    registry.bind("bound_here", "provider", "a bound object")
    return registry


def test_load_all_loads_every_target_and_keeps_a_record_of_each_failure(plugins: Registry) -> None:
    calls: list[tuple[str, str, str]] = []
    results = plugins.load_all("provider",
                               on_load_failure=lambda entry, target, error: calls.append(
                                   (entry.name, target, type(error.__cause__).__name__)))
    assert sorted(results.loaded) == ["bound_here", "good"]
    assert results.loaded["good"].__name__ == "Good" and results.loaded["bound_here"] == "a bound object"
    assert sorted(results.failed) == ["gone", "raises", "typo"] and not results.ok
    assert {name: f.error_type for name, f in results.failed.items()} == {
        "gone": "ModuleNotFoundError", "raises": "RuntimeError", "typo": "AttributeError"}
    assert sorted(calls) == [("gone", "np_not_installed_anywhere:Thing", "ModuleNotFoundError"),
                             ("raises", "np_raises:Thing", "RuntimeError"), ("typo", "np_good:Goood", "AttributeError")]
    raised = results.failed["raises"]
    assert raised.target == "np_raises:Thing" and "needs a GPU" in raised.message and raised.pid == os.getpid()
    recorded = plugins.load_error("raises", "provider")
    assert recorded is not None and (recorded.error_type, recorded.message) == (raised.error_type, raised.message)
    assert plugins.load_error("good", "provider") is None
    assert plugins.load_error("identity_only", "provider") is None
    assert json.loads(json.dumps(results.to_dict()))["failed"]["gone"]["error_type"] == "ModuleNotFoundError"


def test_a_failing_callback_propagates_and_a_plain_load_records_its_error_too(plugins: Registry) -> None:
    def stop(entry: Any, target: str, error: BaseException) -> None:
        raise KeyboardInterrupt(entry.name)

    with pytest.raises(KeyboardInterrupt):
        plugins.load_all("provider", on_load_failure=stop)
    with pytest.raises(TargetImportError):
        plugins.load("typo", "provider")
    failure = plugins.load_error("typo", "provider")
    assert failure is not None and failure.error_type == "AttributeError" and "Goood" in str(failure)
    with pytest.raises(ValueError, match="on_load_failure must be callable"):
        plugins.load_all("provider", on_load_failure="print")  # type: ignore[arg-type]
    with pytest.raises(EntryNotFoundError):
        plugins.load_error("nobody", "provider")


def test_load_errors_stay_out_of_the_export_and_the_event_log(plugins: Registry) -> None:
    revision = plugins.revision
    exported = plugins.export()
    plugins.load_all("provider")
    assert plugins.revision == revision
    assert {k: v for k, v in plugins.export().items() if k != "exported_at"} == \
        {k: v for k, v in exported.items() if k != "exported_at"}


def test_a_deleted_entry_takes_its_load_error_with_it(plugins: Registry, db_path: Path) -> None:
    plugins.load_all("provider")
    plugins.delete("gone", "provider")
    plugins.register("gone", "provider", target="np_good:Good")
    assert plugins.load_error("gone", "provider") is None
    assert plugins.check().ok


def test_a_replaced_target_is_not_blamed_for_the_old_ones_error(plugins: Registry) -> None:
    plugins.load_all("provider")
    plugins.register("typo", "provider", target="np_good:Good", on_conflict="replace")
    assert plugins.load_error("typo", "provider") is None
    plugins.register("typo", "provider", target="np_good:Goood", on_conflict="replace")
    assert plugins.load_error("typo", "provider") is not None  # the same target again: the same error
    plugins.register("typo", "provider", target="np_good:Good", on_conflict="replace")
    assert plugins.load("typo", "provider").__name__ == "Good"
    plugins.register("typo", "provider", target="np_good:Goood", on_conflict="replace")
    assert plugins.load_error("typo", "provider") is None  # the successful load cleared the row


_CHILD_LOAD_ONE = """
import sys
from nameplate import Registry, TargetImportError
with Registry(sys.argv[1]) as registry:
    try:
        print("loaded", registry.load("late", "provider").__name__)
    except TargetImportError as error:
        print("failed", error.target)
"""


def test_a_load_error_recorded_by_one_process_is_seen_and_cleared_by_others(
        site: Path, registry: Registry, db_path: Path) -> None:
    registry.register("late", "provider", target="np_late:Late")
    failing = _run(_CHILD_LOAD_ONE, str(db_path), env=_child_env(site))
    assert failing.stdout.split() == ["failed", "np_late:Late"], failing.stderr
    failure = registry.load_error("late", "provider")
    assert failure is not None and failure.error_type == "ModuleNotFoundError" and failure.pid != os.getpid()
    shown = CliRunner().invoke(main, ["--db", str(db_path), "show", "late"])
    assert shown.exit_code == 0 and "ModuleNotFoundError: cannot load provider 'late'" in shown.output
    assert f"pid {failure.pid}" in shown.output
    as_json = json.loads(CliRunner().invoke(main, ["--db", str(db_path), "--json", "show", "late"]).output)
    assert as_json["load_error"]["error_type"] == "ModuleNotFoundError"
    module(site, "np_late", "class Late:\n    pass\n")  # the package gets installed
    working = _run(_CHILD_LOAD_ONE, str(db_path), env=_child_env(site))
    assert working.stdout.split() == ["loaded", "Late"], working.stderr
    assert registry.load_error("late", "provider") is None
    assert "load error:   -" in CliRunner().invoke(main, ["--db", str(db_path), "show", "late"]).output


_SLOW_IMPORT = """
import pathlib, time
here = pathlib.Path(__file__).parent
(here / "importing").touch()
deadline = time.monotonic() + 30
while not (here / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
raise RuntimeError("broken after a slow start")
"""


def test_importing_user_code_holds_no_lock(site: Path, registry: Registry, db_path: Path) -> None:
    """While a process imports a slow, failing target, another writes at once; the failure is then
    recorded in its own short transaction."""
    module(site, "np_slow", _SLOW_IMPORT)
    registry.register("slow", "provider", target="np_slow:Thing")
    child = subprocess.Popen([sys.executable, "-c", _CHILD_LOAD_ONE.replace('"late"', '"slow"'), str(db_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(site))
    try:
        wait_until(lambda: (site / "importing").exists(), timeout=30)
        with Registry(db_path, timeout=0.5) as impatient:
            started = time.monotonic()
            impatient.register("meanwhile", "provider", target="np_good:Good")
            assert time.monotonic() - started < 0.5
        (site / "go").touch()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert out.split() == ["failed", "np_slow:Thing"], err
    failure = registry.load_error("slow", "provider")
    assert failure is not None and failure.error_type == "RuntimeError" and "slow start" in failure.message


def test_load_all_on_the_command_line(plugins: Registry, db_path: Path, site: Path) -> None:
    command = [sys.executable, "-m", "nameplate", "--db", str(db_path)]
    failed = subprocess.run([*command, "load-all", "provider"], capture_output=True, text=True, timeout=60,
                            env=_child_env(site))
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.strip() == ("nameplate: error: 3 of 4 provider entries failed to load: gone, raises, "
                                     "typo")
    assert "good" in failed.stdout and "RuntimeError" in failed.stdout
    as_json = subprocess.run([*command, "--json", "load-all", "provider"], capture_output=True, text=True,
                             timeout=60, env=_child_env(site))
    assert json.loads(as_json.stdout)["loaded"] == ["good"]
    plugins.delete("gone", "provider")
    plugins.delete("raises", "provider")
    plugins.delete("typo", "provider")
    ok = subprocess.run([*command, "load-all", "provider"], capture_output=True, text=True, timeout=60,
                        env=_child_env(site))
    assert ok.returncode == 0 and "np_good:Good" in ok.stdout, ok.stderr


# -- discover: uninstall, undeclared entry points, version changes -------------------------------------------


def _plugin_warnings(registry: Registry) -> list[str]:
    return [w.message for w in registry.check().warnings if w.check == "plugin"]


def test_discover_records_the_distribution_and_check_notices_a_version_change(
        site: Path, registry: Registry, db_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n\nclass Slow:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast", "step:SlowStep": "np_tools:Slow"})
    found = registry.discover()
    assert sorted((e.kind, e.name) for e in found) == [("provider", "fast"), ("step", "SlowStep")]
    assert found.missing == () and found.forgotten == ()
    fast = registry.require("fast", "provider")
    assert {k: fast.metadata[k] for k in ("distribution", "version", "environment", "entry_point")} == {
        "distribution": "np-tools", "version": "1.0", "environment": sys.prefix, "entry_point": f"{GROUP}:fast"}
    assert _plugin_warnings(registry) == [] and registry.check().checked["plugins"] == 2
    install(site, "np-tools", "1.1", {"fast": "np_tools:Fast", "step:SlowStep": "np_tools:Slow"})
    warnings = _plugin_warnings(registry)
    assert len(warnings) == 2 and all("np-tools is 1.1 now, 1.0 when it was discovered" in w for w in warnings)
    assert all("`nameplate discover` records the installed version" in w for w in warnings)
    assert registry.check().ok  # a stale plugin is a warning, not damage
    registry.discover()
    assert registry.require("fast", "provider").metadata["version"] == "1.1"
    assert _plugin_warnings(registry) == []


def test_discover_reports_then_forgets_an_entry_point_no_longer_declared(
        site: Path, registry: Registry, db_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n\nclass Slow:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast", "slow": "np_tools:Slow"})
    slow_id = {e.name: e.id for e in registry.discover()}["slow"]
    install(site, "np-tools", "2.0", {"fast": "np_tools:Fast"})
    reported = registry.discover()
    assert [e.name for e in reported] == ["fast"] and reported.forgotten == ()
    [missing] = reported.missing
    assert (missing.entry.id, missing.reason, missing.distribution, missing.recorded_version,
            missing.installed_version) == (slow_id, "no longer declared", "np-tools", "1.0", "2.0")
    assert "np-tools 2.0 no longer declares it" in str(missing)
    assert registry.lookup("slow", "provider") == slow_id  # reported, not forgotten
    assert [w for w in _plugin_warnings(registry) if "slow" in w] == [
        f"core/provider/slow (entry point {GROUP}:slow): np-tools 2.0 no longer declares it; "
        "`nameplate discover --forget-missing` forgets it"]
    forgot = registry.discover(forget_missing=True)
    assert [e.id for e in forgot.forgotten] == [slow_id] and registry.lookup("slow", "provider") is None
    deleted = [e for e in registry.changes() if e.action == "delete"]
    assert [(e.name, e.detail["reason"]) for e in deleted] == [("slow", f"plugin no longer declared: {GROUP}:slow")]
    assert _plugin_warnings(registry) == []
    before = table_snapshot(db_path)
    again = registry.discover(forget_missing=True)
    assert again.missing == () and table_snapshot(db_path) == before


def test_an_uninstalled_distribution_is_reported_and_forgotten(site: Path, registry: Registry,
                                                               db_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast"})
    registry.register("mine", "provider", target="np_tools:Fast")  # by hand: never judged as a plugin
    registry.discover()
    uninstall(site, "np-tools")
    warnings = _plugin_warnings(registry)
    assert warnings == [f"core/provider/fast (entry point {GROUP}:fast): np-tools 1.0 is not installed in "
                        f"{sys.prefix}; `nameplate discover --forget-missing` forgets it"]
    result = registry.discover()
    assert list(result) == [] and [m.reason for m in result.missing] == ["uninstalled"]
    assert registry.lookup("fast", "provider") is not None
    forgot = registry.discover(forget_missing=True)
    assert [e.name for e in forgot.forgotten] == ["fast"]
    assert registry.lookup("fast", "provider") is None and registry.lookup("mine", "provider") is not None
    assert _plugin_warnings(registry) == [] and registry.check().checked["plugins"] == 0


def test_entries_discovered_in_another_environment_are_never_judged_here(site: Path, registry: Registry,
                                                                        db_path: Path) -> None:
    registry.register("theirs", "provider", target="np_elsewhere:Thing",
                      metadata={"entry_point": f"{GROUP}:theirs", "distribution": "np-elsewhere", "version": "3",
                                "environment": "/opt/another-venv"})
    assert _plugin_warnings(registry) == [] and registry.check().checked["plugins"] == 0
    before = table_snapshot(db_path)
    result = registry.discover(forget_missing=True)
    assert result.missing == () and table_snapshot(db_path) == before
    # Entries from before environments were recorded are judged wherever discovery runs.
    registry.register("older", "provider", target="np_elsewhere:Thing",
                      metadata={"entry_point": f"{GROUP}:older", "distribution": "np-elsewhere", "version": "3"})
    assert [m.entry.name for m in registry.discover().missing] == ["older"]


def test_discover_does_not_forget_what_changed_since_it_was_judged_nor_another_group(
        site: Path, registry: Registry) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast"})
    registry.discover()
    install(site, "np-other", "1.0", {"other": "np_tools:Fast"}, group="np.other_group")
    registry.discover("np.other_group")
    uninstall(site, "np-tools")
    forgot = registry.discover("np.other_group", forget_missing=True)
    assert forgot.missing == () and registry.lookup("fast", "provider") is not None


_HOLDER = """
import sys, time
from pathlib import Path
from nameplate import Registry
with Registry(sys.argv[1]) as registry:
    registry.acquire("fast", "provider")
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.02)
"""


def test_forgetting_a_plugin_another_process_leases_writes_nothing(site: Path, registry: Registry,
                                                                   db_path: Path, tmp_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast", "slow": "np_tools:Fast"})
    registry.discover()
    install(site, "np-tools", "1.1", {"slow": "np_tools:Fast"})  # an upgrade and a missing entry point
    held, done = tmp_path / "held", tmp_path / "done"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db_path), str(held), str(done)],
                              env=_child_env(site), stderr=subprocess.PIPE, text=True)
    try:
        wait_until(held.exists, timeout=30)
        before = table_snapshot(db_path)
        with pytest.raises(LeaseHeldError, match="leased by pid"):
            registry.discover(forget_missing=True)
        snapshot = table_snapshot(db_path)
        del snapshot["session"], before["session"]  # the holder's heartbeat is not the call's doing
        assert snapshot == before
        assert [m.entry.name for m in registry.discover().missing] == ["fast"]  # reporting still works
        assert registry.require("slow", "provider").metadata["version"] == "1.1"
    finally:
        done.touch()
        holder.communicate(timeout=60)
    assert [e.name for e in registry.discover(forget_missing=True).forgotten] == ["fast"]


def test_discover_on_the_command_line(site: Path, db_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast", "slow": "np_tools:Fast"})
    command = [sys.executable, "-m", "nameplate", "--db", str(db_path)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=_child_env(site))

    first = run("discover")
    assert first.returncode == 0 and "np_tools:Fast" in first.stdout and "np-tools" in first.stdout, first.stderr
    install(site, "np-tools", "1.1", {"fast": "np_tools:Fast"})
    checked = run("check")
    assert checked.returncode == 0 and "warning  plugin: core/provider/slow" in checked.stdout, checked.stderr
    reported = run("discover")
    assert "missing  core/provider/slow" in reported.stdout and "--forget-missing` deletes them" in reported.stdout
    forgot = json.loads(run("--json", "discover", "--forget-missing").stdout)
    assert [e["name"] for e in forgot["forgotten"]] == ["slow"] and forgot["missing"][0]["reason"] == \
        "no longer declared"
    assert [e["name"] for e in forgot["registered"]] == ["fast"]
    bad = run("discover", "--kind", "no_such_kind")
    assert bad.returncode == 3 and bad.stderr.startswith("nameplate: error: kind 'no_such_kind' is not defined")


def _discover_at_startup(barrier: Any, results: Any, index: int, path: str, site: str) -> None:
    try:
        sys.path.insert(0, site)
        with Registry(path, timeout=60) as registry:
            barrier.wait(timeout=60)
            found = registry.discover(forget_missing=True)
            results.put((index, (sorted(e.id for e in found), [e.id for e in found.forgotten])))
    except BaseException as error:  # report every failure to the parent instead of dying silently
        results.put((index, ("error", repr(error))))


def test_processes_discovering_at_once_agree_and_forget_a_plugin_exactly_once(
        site: Path, registry: Registry, db_path: Path) -> None:
    module(site, "np_tools", "class Fast:\n    pass\n")
    install(site, "np-tools", "1.0", {"fast": "np_tools:Fast", "slow": "np_tools:Fast"})
    slow_id = {e.name: e.id for e in registry.discover()}["slow"]
    install(site, "np-tools", "2.0", {"fast": "np_tools:Fast", "new": "np_tools:Fast"})
    outcomes = run_processes(_discover_at_startup, [(str(db_path), str(site))] * 4, timeout=120)
    assert all(outcome[0] != "error" for outcome in outcomes), outcomes
    assert len({tuple(registered) for registered, _ in outcomes}) == 1  # one id per name, whoever created it
    assert sorted(forgotten for _, forgotten in outcomes) == [[], [], [], [slow_id]]
    assert [e.entry_id for e in registry.changes() if e.action == "delete"] == [slow_id]
    assert sorted(e.name for e in registry.list("provider")) == ["fast", "new"]
    assert registry.require("fast", "provider").metadata["version"] == "2.0"
