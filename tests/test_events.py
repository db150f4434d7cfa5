"""The event log: changes since a revision, following commits of other processes, pruning."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nameplate import Event, InvalidInputError, Registry, _watch

from conftest import run_processes


def test_every_change_is_an_event_in_revision_order(registry: Registry) -> None:
    assert registry.revision == 0 and registry.changes() == []
    entry_id = registry.resolve("a", "node", {"url": "http://x"})
    registry.rename("a", "b")
    registry.delete("b")
    events = registry.changes()
    assert [e.action for e in events] == ["create", "rename", "delete"]
    assert [e.rev for e in events] == sorted(e.rev for e in events) and events[-1].rev == registry.revision
    assert {e.entry_id for e in events} == {entry_id}
    first = events[0]
    assert isinstance(first, Event) and first.workspace == "core" and first.kind == "node" and first.name == "a"
    assert first.detail == {"metadata": {"url": "http://x"}} and first.actor.split("@")[0].isdigit()
    assert first.to_dict()["at"].endswith("+00:00")


def test_changes_since_and_limit(registry: Registry) -> None:
    for name in "abcde":
        registry.resolve(name, "node")
    revs = [e.rev for e in registry.changes()]
    assert [e.name for e in registry.changes(since=revs[1])] == ["c", "d", "e"]
    assert [e.name for e in registry.changes(since=revs[1], limit=2)] == ["c", "d"]
    assert registry.changes(since=revs[-1]) == []
    assert registry.changes(limit=0) == []


@pytest.mark.parametrize(("since", "limit"), [(-1, None), ("3", None), (True, None), (0, -2), (0, 1.5)])
def test_bad_arguments_are_refused(registry: Registry, since: Any, limit: Any) -> None:
    with pytest.raises(InvalidInputError):
        registry.changes(since, limit)


def test_session_ids_are_recorded(registry: Registry) -> None:
    session = registry.session(label="worker")
    registry.resolve("a", "node")
    assert registry.changes()[-1].session_id == session.id


def test_gc_prunes_old_events_and_ended_sessions_but_never_reuses_a_revision(registry: Registry,
                                                                             db_path: Path) -> None:
    registry.resolve("a", "node")
    registry.resolve("b", "node")
    with Registry(db_path) as ended:
        ended.session(label="gone")
    live = registry.session(label="here")
    top = registry.revision
    assert registry.gc_events(30) == {"events_deleted": 0, "sessions_deleted": 0}
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE event SET at = at - 40 * 86400")
    conn.execute("UPDATE session SET ended_at = ended_at - 40 * 86400, beat_at = beat_at - 40 * 86400")
    conn.commit()
    conn.close()
    result = registry.gc_events(30)
    # Everything old goes but the newest event (the first gc's own), which keeps the numbering going.
    assert result["events_deleted"] == top and result["sessions_deleted"] == 1
    assert [(e.rev, e.action) for e in registry.changes()] == [(top + 1, "gc"), (top + 2, "gc")]
    assert [s.id for s in registry.sessions(alive=True)] == [live.id]
    registry.gc_events(0)
    registry.resolve("c", "node")
    assert registry.changes()[-1].rev == top + 4  # a pruned revision is never handed out again


def test_revisions_only_grow_across_prunes_of_everything(registry: Registry) -> None:
    seen = []
    for round_index in range(4):
        registry.resolve(f"n{round_index}", "node")
        seen.append(registry.revision)
        registry.gc_events(0)  # every event is older than now: all go but the newest
        seen.append(registry.revision)
        assert len(registry.changes()) == 2  # the newest before the prune, and the prune's own
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


@pytest.mark.parametrize("keep_days", [-1, "7", None, True, float("nan")])
def test_gc_refuses_bad_ages(registry: Registry, keep_days: Any) -> None:
    with pytest.raises(InvalidInputError):
        registry.gc_events(keep_days)


def _writer(barrier: Any, results: Any, index: int, db: str, names: list[str]) -> None:
    barrier.wait()
    with Registry(db) as registry:
        for name in names:
            registry.resolve(name, "node")
    results.put((index, "done"))


def test_follow_sees_commits_of_other_processes_in_order(registry: Registry, db_url: str) -> None:
    seen: list[Event] = []
    done = threading.Event()

    def follow() -> None:
        for event in registry.follow(interval=0.01, stop=lambda: len(seen) >= 20 or done.is_set()):
            seen.append(event)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        time.sleep(0.2)
        run_processes(_writer, [(str(db_url), [f"p{i}_{n}" for n in range(10)]) for i in range(2)])
        deadline = time.monotonic() + 20
        while len(seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        follower.join(timeout=10)
    assert len(seen) == 20
    assert [e.rev for e in seen] == sorted(e.rev for e in seen) and len({e.rev for e in seen}) == 20
    assert {e.name for e in seen} == {f"p{i}_{n}" for i in range(2) for n in range(10)}


def test_follow_starts_now_by_default_and_from_since_when_told(registry: Registry) -> None:
    registry.resolve("old", "node")
    first = registry.revision
    registry.resolve("newer", "node")
    replay = registry.follow(since=first, interval=0.01, stop=lambda: True)
    assert [e.name for e in replay] == ["newer"]
    assert list(registry.follow(interval=0.01, stop=lambda: True)) == []


def test_follow_polls_the_commit_signal_not_the_log(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = _watch.scan
    monkeypatch.setattr(_watch, "scan", lambda *a, **k: reads.append(1) or real(*a, **k))
    started = time.monotonic()
    assert list(registry.follow(interval=0.01, stop=lambda: time.monotonic() - started > 0.5)) == []
    assert len(reads) == 1  # the catch-up read only: idle looks at the commit signal never query the log


def test_follow_also_sees_writes_of_its_own_connection(registry: Registry) -> None:
    # data_version does not move for this connection's own commits; the commit signal counts them too
    seen: list[str] = []
    wrote = False
    started = time.monotonic()

    def stop() -> bool:
        nonlocal wrote
        if not wrote:
            registry.resolve("mine", "node")  # same thread, same connection as the follower
            wrote = True
        return bool(seen) or time.monotonic() - started > 10

    for event in registry.follow(interval=0.05, stop=stop):
        seen.append(event.name or "")
    assert seen == ["mine"]


def test_follow_refuses_a_bad_interval(registry: Registry) -> None:
    with pytest.raises(InvalidInputError):
        next(registry.follow(interval=0))
