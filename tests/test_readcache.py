"""The read cache never answers from before the last commit a fresh read would see.

A writer process changes which name maps to which id in every way there is (create, rename, delete,
hide, unhide, promote, import) while this process keeps asking through a cached Registry; after
each change the cached answers must equal those of an uncached Registry on the same file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nameplate import InvalidInputError, NameplateError, Registry
from nameplate.backends import _held_files

_WRITER = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1])
steps = [
    lambda: registry.resolve("a", "node"),
    lambda: registry.rename("a", "b", "node"),
    lambda: registry.resolve("a", "node"),
    lambda: registry.delete("b", "node"),
    lambda: registry.hide("a", "node", workspace="dev"),
    lambda: registry.unhide("a", "node", workspace="dev"),
    lambda: registry.hide("a", "node", workspace="dev"),
    lambda: registry.resolve("a", "node", workspace="dev"),
    lambda: registry.delete("a", "node", workspace="dev"),
    lambda: registry.resolve("c", "node", workspace="dev"),
    lambda: registry.promote("c", "node", workspace="dev"),
    lambda: registry.import_document({"format": "nameplate-export", "version": 1, "workspaces": [], "kinds": [],
                                      "entries": [], "tombstones": []}, replace=True),
    lambda: registry.resolve("a", "node"),
]
for step in steps:
    sys.stdin.readline()
    step()
    print("done", flush=True)
"""

NAMES = [(name, workspace) for name in ("a", "b", "c") for workspace in ("core", "dev")]


def _answers(registry: Registry) -> list[str | None]:
    """Each name's id in each workspace, or the error the lookup raised (the import removes 'dev')."""
    answers: list[str | None] = []
    for name, workspace in NAMES:
        try:
            answers.append(registry.lookup(name, "node", workspace=workspace))
        except NameplateError as error:
            answers.append(type(error).__name__)
    return answers


@pytest.mark.parametrize("signal", ["wal-index header", "data_version"])
def test_cached_answers_follow_every_kind_of_change_made_by_another_process(
        db_path: Path, signal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if signal == "data_version":  # as on a file without a usable -shm: SQLite's own counter
        monkeypatch.setattr(_held_files, "wal_index", lambda key, path: None)
    with Registry(db_path) as setup:
        setup.create_workspace("dev")
    cached, fresh = Registry(db_path), Registry(db_path, cache=False)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdin is not None and writer.stdout is not None
        seen = []
        for _ in range(13):
            before = _answers(cached)  # warm: the next answers would come from the cache
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "done"
            after = _answers(cached)
            assert after == _answers(fresh), f"stale after step {len(seen) + 1}: was {before}"
            seen.append(after)
        assert len({tuple(a) for a in seen}) > 6, "the steps did not change the answers as meant"
    finally:
        writer.kill()
        writer.wait(timeout=60)
        cached.close()
        fresh.close()


def test_this_threads_and_other_threads_writes_are_seen(db_path: Path) -> None:
    with Registry(db_path) as registry:
        first = registry.resolve("a", "node")
        assert registry.lookup("a", "node") == first
        registry.rename("a", "b", "node")
        assert registry.lookup("a", "node") is None and registry.lookup("b", "node") == first
        other = threading.Thread(target=lambda: registry.delete("b", "node"))
        other.start()
        other.join()
        assert registry.lookup("b", "node") is None
        assert registry.resolve("b", "node") != first


def test_heartbeats_and_usage_stamps_leave_the_cache_warm(db_path: Path) -> None:
    with Registry(db_path) as registry:
        session = registry.session()  # opening it logs an event: before the answers are cached
        registry.resolve("a", "node")
        registry.lookup("a", "node")
        cache = registry._store._cache
        assert cache is not None
        assert ("lookup", "core", "node", "a") in cache.answers()
        for _ in range(3):
            assert session.beat()  # a commit that logs no event
        assert ("lookup", "core", "node", "a") in cache.answers(), "a heartbeat emptied the cache"
        registry.resolve("z", "node")  # this thread's own create, nothing else in between: still warm
        assert ("lookup", "core", "node", "a") in cache.answers()
        with Registry(db_path) as other:  # another connection's event: everything is read again
            other.resolve("y", "node")
        assert ("lookup", "core", "node", "a") not in cache.answers()


def test_a_create_of_its_own_falsifies_no_kept_answer(db_path: Path) -> None:
    """A thread's own create keeps the cache warm, but never a miss or a kind-less answer of that name."""
    with Registry(db_path) as registry, Registry(db_path, cache=False) as fresh:
        registry.create_workspace("dev")
        kept = registry.resolve("kept", "node")
        assert registry.lookup("kept", "node") == kept
        assert registry.lookup("n", "node", workspace="dev") is None  # a miss, in a child layer
        assert registry.lookup("m") is None
        registry.resolve("shared", "node")
        assert registry.lookup("shared") is not None  # kind-less: one kind has it
        created = registry.resolve("n", "node")  # in the parent: now visible in dev too
        assert registry.lookup("n", "node", workspace="dev") == created
        registry.resolve("m", "module")
        assert registry.lookup("m") == fresh.lookup("m")
        registry.resolve("shared", "module")  # a second kind: the kind-less lookup is ambiguous now
        with pytest.raises(NameplateError) as raised:
            registry.lookup("shared")
        assert type(raised.value).__name__ == "AmbiguousNameError"
        registry.update("kept", "node", metadata={"v": 1})  # no kept answer shows metadata
        assert registry.lookup("kept", "node") == kept
        registry.resolve("kept", "node", {"v": 2})  # a merge through resolve: its probe is read again
        entry = fresh.get("kept", "node")
        assert entry is not None and entry.metadata == {"v": 2}
        assert registry.get("kept", "node") == entry


def test_another_writer_between_a_read_and_an_own_create_empties_the_cache(db_path: Path) -> None:
    with Registry(db_path) as registry, Registry(db_path) as other:
        registry.resolve("a", "node")
        assert registry.lookup("b", "node") is None  # cached miss
        cache = registry._store._cache
        assert cache is not None
        cache.answers()  # valid at the current revision
        # What a create of this thread sees when another process's create lands between the start of
        # its call and its write lock: its own event is not the next after the cached revision.
        other.resolve("b", "node")
        with registry._backend.write() as tx:
            revision = registry._store.append(tx, "create", kind="node", name="c")
        cache.wrote(revision, "c")
        assert registry.lookup("b", "node") == other.lookup("b", "node")


def test_a_forked_child_starts_with_an_empty_cache(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("a", "node")
        registry.lookup("a", "node")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report whether it inherited answers, then leave at once
            cache = registry._store._cache
            inherited = cache is not None and bool(cache._state.answers)
            os.write(write, b"1" if inherited else b"0")
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"0"
        os.close(read)
        os.waitpid(pid, 0)


def test_the_cache_is_off_with_one_argument_and_refuses_non_booleans(db_path: Path) -> None:
    with Registry(db_path, cache=False) as registry:
        assert registry._store._cache is None
        registry.resolve("a", "node")
        assert registry.lookup("a", "node") is not None
    with pytest.raises(InvalidInputError, match="cache must be True or False"):
        Registry(db_path, cache="yes")  # type: ignore[arg-type]


def test_the_cache_is_bounded(db_path: Path) -> None:
    with Registry(db_path) as registry:
        cache = registry._store._cache
        assert cache is not None
        cache._capacity = 10
        for i in range(50):
            registry.lookup(f"n{i}", "node")
            assert len(cache.answers()) <= 10
