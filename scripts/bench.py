#!/usr/bin/env python3
"""Benchmarks: every hot nameplate operation next to a baseline measured in the same run.

    python scripts/bench.py --out bench-result.json            # everything (about 5 minutes on 2 cores)
    python scripts/bench.py --quick --out quick.json           # smaller sizes and shorter runs
    python scripts/bench.py --db postgresql://u@host/db --out pg.json   # that server beside SQLite

Each figure is the median over several repetitions of a timed loop (per operation). The floor is plain
``sqlite3`` on a file with nameplate's own schema and pragmas (WAL, same synchronous): a point select
by name, and an insert + commit. Every nameplate figure is printed as a ratio against its floor.
Targets (issue 8) are printed as met / missed with the margin; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ulid import ULID

from nameplate import Registry
from nameplate.backends.sqlite import SqliteBackend

SPAWN = multiprocessing.get_context("spawn")


# -- timing helpers ------------------------------------------------------------------------------


def per_op(fn: Callable[[int], Any], n: int, reps: int) -> dict[str, float]:
    """Median and spread of the per-operation time (µs) over ``reps`` loops of ``n`` calls."""
    samples = []
    counter = 0
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn(counter)
            counter += 1
        samples.append((time.perf_counter() - start) / n * 1e6)
    return {"median_us": statistics.median(samples), "min_us": min(samples), "max_us": max(samples)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fresh_registry(directory: Path, name: str) -> Registry:
    return Registry(directory / name, timeout=60)


def populate(path: Path, count: int, kind: str = "node", prefix: str = "n") -> float:
    """Insert ``count`` entries straight into a migrated file in one transaction; return seconds taken."""
    Registry(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    kind_id = conn.execute("SELECT id FROM kind WHERE name = ?", (kind,)).fetchone()[0]
    started = time.perf_counter()
    now = time.time()
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("BEGIN IMMEDIATE")
    batch = 50_000
    for offset in range(0, count, batch):
        rows = [(str(ULID()), kind_id, f"{prefix}{i}", now, now, now)
                for i in range(offset, min(count, offset + batch))]
        conn.executemany("INSERT INTO entry (id, workspace_id, kind_id, name, created_at, updated_at, "
                         "last_seen_at) VALUES (?, 1, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def floor_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    for pragma in ("journal_mode = wal", "synchronous = NORMAL", "foreign_keys = 1", "cache_size = -65536"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


FLOOR_SELECT = "SELECT id FROM entry WHERE name = ? AND kind_id = 1 AND workspace_id = 1"
FLOOR_INSERT = ("INSERT INTO entry (id, workspace_id, kind_id, name, created_at, updated_at, last_seen_at) "
                "VALUES (?, 1, 1, ?, ?, ?, ?)")


def floor_insert(conn: sqlite3.Connection, name: str) -> None:
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(FLOOR_INSERT, (str(ULID()), name, now, now, now))
    conn.execute("COMMIT")


# -- single-process operations ---------------------------------------------------------------------


def bench_operations(work: Path, quick: bool) -> dict[str, Any]:
    n, reps = (2000, 5) if quick else (5000, 7)
    size = 10_000
    path = work / "ops.db"
    populate(path, size)
    floor = floor_connection(path)
    results: dict[str, Any] = {}
    results["floor_select"] = per_op(lambda i: floor.execute(FLOOR_SELECT, (f"n{i % size}",)).fetchone(), n, reps)
    results["floor_insert_commit"] = per_op(lambda i: floor_insert(floor, f"floor-{i}"), n // 5, reps)
    with Registry(path, timeout=60, cache=False) as uncached:
        results["lookup_uncached"] = per_op(lambda i: uncached.lookup(f"n{i % size}", "node"), n, reps)
    with Registry(path, timeout=60) as registry:
        # A working set of 1,000 names looked up again and again (a process resolving its own and its
        # peers' identities): after the first pass every lookup is a cache hit.
        hot = 1000
        results["lookup"] = per_op(lambda i: registry.lookup(f"n{i % hot}", "node"), n, reps)
        results["get"] = per_op(lambda i: registry.get(f"n{i % size}", "node"), n, reps)
        for i in range(size):  # make last_seen fresh so the measured resolves are pure reads
            registry.resolve(f"n{i}", "node")
        results["resolve_existing"] = per_op(lambda i: registry.resolve(f"n{i % size}", "node"), n, reps)
        results["resolve_create"] = per_op(lambda i: registry.resolve(f"new-{i}", "node"), n // 5, reps)
        for i in range(1000):
            registry.resolve(f"w{i}", "workcell")
        results["list_1k_of_one_kind"] = per_op(lambda i: registry.list("workcell"), 5, reps)
        workcell = floor.execute("SELECT id FROM kind WHERE name = 'workcell'").fetchone()[0]
        results["floor_list_1k"] = per_op(lambda i: floor.execute(
            "SELECT * FROM entry WHERE kind_id = ? AND workspace_id = 1 ORDER BY name", (workcell,)).fetchall(),
            5, reps)
        if hasattr(registry, "register"):
            results["register_validated"] = per_op(
                lambda i: registry.register(f"Step{i}", "step", {"sagemaker_step_type": "Processing"}),
                n // 10, reps)
        if hasattr(registry, "acquire"):
            for i in range(200):
                registry.resolve(f"lockable{i}", "node")

            def acquire_release(i: int) -> None:
                registry.acquire(f"lockable{i % 200}", "node").release()

            acquire_release(0)  # opens the session outside the timing
            results["acquire_release"] = per_op(acquire_release, n // 10, reps)
            session = registry.session()
            if hasattr(session, "beat"):
                results["heartbeat"] = per_op(lambda i: session.beat(), n // 5, reps)
        if hasattr(registry, "select"):
            for start in range(0, 10_000, 1000):
                registry.register_many([
                    {"name": f"provider{i}", "kind": "provider",
                     "capabilities": ["llm", "chat"] + (["vision"] if i % 10 == 0 else [])}
                    for i in range(start, start + 1000)])
            marks = "?, ?"
            results["floor_capability_query"] = per_op(lambda i: floor.execute(
                f"SELECT e.id FROM (SELECT entry_pk FROM entry_capability WHERE capability IN ({marks}) GROUP BY "
                "entry_pk HAVING count(*) = 2) AS m JOIN entry AS e ON e.pk = m.entry_pk ORDER BY e.name",
                ("llm", "vision")).fetchall(), 20, reps)
            results["select_first_10k"] = per_op(
                lambda i: registry.select("provider", requires={"llm", "vision"}, strategy="first"), 20, reps)
            results["select_round_robin_10k"] = per_op(
                lambda i: registry.select("provider", requires={"llm", "vision"}, strategy="round_robin"),
                20, reps)
    floor.close()
    return results


# -- scale -------------------------------------------------------------------------------------------


def bench_scale(work: Path, sizes: list[int], quick: bool) -> dict[str, Any]:
    n, rounds = (1000, 3) if quick else (3000, 5)
    files: dict[int, Path] = {}
    build: dict[int, float] = {}
    for size in sizes:
        files[size] = work / f"scale-{size}.db"
        build[size] = populate(files[size], size)
    samples: dict[int, dict[str, list[float]]] = {s: {"lookup": [], "resolve_create": [], "floor": []}
                                                  for s in sizes}
    # Uncached: growth is a property of the storage path; a cache hit costs the same at any size, and
    # random names over 1M entries would mostly miss a per-thread cache anyway.
    registries = {size: Registry(files[size], timeout=60, cache=False) for size in sizes}
    floors = {size: floor_connection(files[size]) for size in sizes}
    rng = random.Random(7)
    created = 0
    for _ in range(rounds):  # interleaved rounds: this machine's noise hits every size alike
        for size in sizes:
            registry, floor = registries[size], floors[size]
            names = [f"n{rng.randrange(size)}" for _ in range(n)]
            start = time.perf_counter()
            for name in names:
                registry.lookup(name, "node")
            samples[size]["lookup"].append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            for name in names:
                floor.execute(FLOOR_SELECT, (name,)).fetchone()
            samples[size]["floor"].append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            for _ in range(n // 10):
                registry.resolve(f"scale-new-{created}", "node")
                created += 1
            samples[size]["resolve_create"].append((time.perf_counter() - start) / (n // 10) * 1e6)
    for registry in registries.values():
        registry.close()
    for floor in floors.values():
        floor.close()
    return {str(size): {"build_seconds": build[size],
                        **{f"{key}_median_us": statistics.median(vals) for key, vals in samples[size].items()}}
            for size in sizes}


# -- contention --------------------------------------------------------------------------------------


def _contender(barrier: Any, results: Any, index: int, path: str, seconds: float, operation: str,
               sqlite_busy_handler: bool) -> None:
    SqliteBackend.use_sqlite_busy_handler = sqlite_busy_handler
    latencies: list[float] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    rng = random.Random(index)
    try:
        with Registry(path, timeout=30) as registry:
            if operation == "acquire_release":  # open the session before the clock starts
                registry.resolve(f"warmup-{index}", "node")
                registry.acquire(f"warmup-{index}", "node").release()
            barrier.wait(timeout=60)
            deadline = time.perf_counter() + seconds
            counter = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    if operation == "resolve":
                        # 80 % existing names (shared by all processes), 20 % new ones (also shared:
                        # every process creates the same new names, racing for them)
                        name = f"n{rng.randrange(1000)}" if rng.random() < 0.8 else f"new-{counter}"
                        seen[name] = registry.resolve(name, "node")
                        counter += 1
                    else:
                        lease = registry.acquire(f"n{rng.randrange(50)}", "node", wait=30)
                        lease.release()
                except Exception as error:  # counted and reported: errors must be 0
                    errors.append(repr(error))
                latencies.append(time.perf_counter() - started)
        results.put((index, {"latencies": latencies, "errors": errors, "seen": seen}))
    except BaseException as error:
        results.put((index, {"latencies": latencies, "errors": errors + [repr(error)], "seen": seen}))


def run_contention(path: Path, processes: int, seconds: float, operation: str,
                   sqlite_busy_handler: bool) -> dict[str, Any]:
    barrier = SPAWN.Barrier(processes)
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_contender, args=(barrier, queue, i, str(path), seconds, operation,
                                                    sqlite_busy_handler)) for i in range(processes)]
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=seconds + 120)[1] for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    latencies = [lat for o in outcomes for lat in o["latencies"]]
    errors = [e for o in outcomes for e in o["errors"]]
    ids: dict[str, set[str]] = {}
    for outcome in outcomes:
        for name, entry_id in outcome["seen"].items():
            ids.setdefault(name, set()).add(entry_id)
    duplicates = sum(1 for values in ids.values() if len(values) > 1)
    conn = sqlite3.connect(path)
    rows, distinct = conn.execute("SELECT count(*), count(DISTINCT name) FROM entry WHERE kind_id = "
                                  "(SELECT id FROM kind WHERE name = 'node')").fetchone()
    conn.close()
    return {
        "processes": processes,
        "ops": len(latencies),
        "throughput_per_s": len(latencies) / seconds,
        "p50_ms": pct(latencies, 0.50) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
        "errors": len(errors),
        "error_samples": errors[:3],
        "duplicates": duplicates + (rows - distinct),
    }


def bench_contention(work: Path, quick: bool) -> dict[str, Any]:
    seconds = 1.5 if quick else 3.0
    results: dict[str, Any] = {}
    operations = ["resolve"] + (["acquire_release"] if hasattr(Registry, "acquire") else [])
    for operation in operations:
        for handler in ("nameplate", "sqlite"):
            if operation != "resolve" and handler == "sqlite":
                continue
            key = f"{operation}/{handler}_busy_handler"
            results[key] = []
            for processes in (1, 2, 4, 8):
                path = work / f"contention-{operation}-{handler}-{processes}.db"
                populate(path, 1000)
                results[key].append(run_contention(path, processes, seconds, operation, handler == "sqlite"))
    return results


# -- predecessor -----------------------------------------------------------------------------------


def bench_predecessor(work: Path, quick: bool) -> dict[str, Any] | None:
    try:
        from madsci.common.registry.local_registry import LocalRegistryManager  # type: ignore[import-not-found]
    except ImportError:
        return None
    results: dict[str, Any] = {}
    for size in (1000, 10_000):
        path = work / f"madsci-{size}" / "registry.json"
        path.parent.mkdir()
        manager = LocalRegistryManager(registry_path=path)
        entries = {}
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        for i in range(size):
            entries[f"n{i}"] = {"id": str(ULID()), "component_type": "node", "created_at": now,
                                "last_seen": now, "metadata": {}}
        manager.import_entries({"entries": entries})
        reps = 3
        n = 5 if size == 10_000 or quick else 20
        lookup = per_op(lambda i, manager=manager, size=size: manager.lookup(f"n{i % size}"), n, reps)
        create = per_op(lambda i, manager=manager, size=size: manager.resolve(
            f"madsci-new-{size}-{i}", "node", acquire_lock=False), n, reps)
        race = run_madsci_race(path, processes=4, names=[f"race-{size}-{i}" for i in range(50)])
        results[str(size)] = {"lookup": lookup, "resolve_create": create, "race_4_processes": race}
    return results


# -- coordination (issue 20) ---------------------------------------------------------------------------


def bench_coordination(work: Path, quick: bool) -> dict[str, Any]:
    """find by metadata and list pages over 10k entries of one kind, compare-and-swap against a plain
    update, a 5-operation transaction against 5 resolves, and how soon a waiter wakes after a commit."""
    reps = 3 if quick else 5
    size = 10_000
    path = work / "coordination.db"
    populate(path, 0)
    results: dict[str, Any] = {}
    with Registry(path, timeout=60) as registry:
        for start in range(0, size, 1000):
            with registry.transaction() as tx:
                for i in range(start, start + 1000):
                    tx.resolve(f"lh_{i:05d}", "node", {"room": f"R{i % 10}", "i": i})
        results["list_10k_of_one_kind"] = per_op(lambda i: registry.list("node"), 3, reps)
        results["find_by_metadata_10k"] = per_op(lambda i: registry.find("node", metadata={"room": "R3"}), 3, reps)
        results["list_page_100_prefix_10k"] = per_op(
            lambda i: registry.list("node", prefix="lh_0", limit=100, after=f"lh_{(i * 97) % 9000:05d}"), 50, reps)
        results["update"] = per_op(lambda i: registry.update("lh_00001", "node", metadata={"n": i}), 200, reps)

        def compare_and_swap(i: int) -> None:
            entry = registry.require("lh_00002", "node")
            registry.update("lh_00002", "node", metadata={"n": i}, expected_revision=entry.revision)

        results["get_then_compare_and_swap"] = per_op(compare_and_swap, 200, reps)
        results["resolve_create_x5"] = per_op(
            lambda i: [registry.resolve(f"single-{i}-{j}", "node") for j in range(5)], 40, reps)

        def five_in_one(i: int) -> None:
            with registry.transaction() as tx:
                for j in range(5):
                    tx.resolve(f"batched-{i}-{j}", "node")

        results["transaction_of_5_creates"] = per_op(five_in_one, 40, reps)
        results["wait_wake_after_commit_ms"] = _wake_latency(path, 20 if quick else 50)
    return results


def _wake_latency(path: Path, rounds: int) -> dict[str, float]:
    """Milliseconds from the end of another connection's commit to the waiter's wake."""
    import threading

    lags: list[float] = []
    with Registry(path, timeout=60) as waiter, Registry(path, timeout=60) as writer:
        waiter.resolve("watched", "node")
        for i in range(rounds):
            since = waiter.revision
            committed: list[float] = []

            def change(i: int = i, committed: list[float] = committed) -> None:
                time.sleep(0.02)
                writer.update("watched", "node", metadata={"i": i})
                committed.append(time.perf_counter())

            thread = threading.Thread(target=change)
            thread.start()
            waiter.wait_for_change("watched", "node", since=since, timeout=10)
            woke = time.perf_counter()
            thread.join()
            lags.append(max(0.0, woke - committed[0]) * 1000)
    return {"median_ms": statistics.median(lags), "p90_ms": pct(lags, 0.9), "max_ms": max(lags)}


def _madsci_racer(barrier: Any, results: Any, index: int, path: str, names: list[str]) -> None:
    from madsci.common.registry.local_registry import LocalRegistryManager  # type: ignore[import-not-found]

    manager = LocalRegistryManager(registry_path=Path(path))
    order = list(names)
    random.Random(index).shuffle(order)
    seen: dict[str, str] = {}
    errors: list[str] = []
    barrier.wait(timeout=60)
    started = time.perf_counter()
    for name in order:
        try:
            seen[name] = manager.resolve(name, "node", acquire_lock=False)
        except Exception as error:  # counted and reported
            errors.append(repr(error))
    results.put((index, {"seconds": time.perf_counter() - started, "seen": seen, "errors": errors}))


def run_madsci_race(path: Path, processes: int, names: list[str]) -> dict[str, Any]:
    """The predecessor's 4-process race: every process resolves the same new names in its own order."""
    barrier = SPAWN.Barrier(processes)
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_madsci_racer, args=(barrier, queue, i, str(path), names))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=1800)[1] for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    ids: dict[str, set[str]] = {}
    for outcome in outcomes:
        for name, entry_id in outcome["seen"].items():
            ids.setdefault(name, set()).add(entry_id)
    seconds = max(o["seconds"] for o in outcomes)
    total = sum(len(o["seen"]) + len(o["errors"]) for o in outcomes)
    return {"processes": processes, "names": len(names), "seconds": seconds,
            "per_resolve_ms": seconds / len(names) * 1e3, "throughput_per_s": total / seconds,
            "errors": sum(len(o["errors"]) for o in outcomes),
            "duplicates": sum(1 for v in ids.values() if len(v) > 1)}


# -- report ------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    ops = result["operations"]
    lines = []
    floor_select = ops["floor_select"]["median_us"]
    floor_insert = ops["floor_insert_commit"]["median_us"]
    r = ratio(ops["lookup"]["median_us"], floor_select)
    lines.append(("cached lookup p50 <= 1.0x floor point select", r <= 1.0, f"{r:.2f}x"))
    if "lookup_uncached" in ops:
        r = ratio(ops["lookup_uncached"]["median_us"], floor_select)
        lines.append(("uncached lookup p50 <= 2.0x floor point select", r <= 2.0, f"{r:.2f}x"))
    r = ratio(ops["resolve_create"]["median_us"], floor_insert)
    lines.append(("resolve-create <= 2x floor insert+commit", r <= 2, f"{r:.2f}x"))
    scale = result.get("scale") or {}
    if "1000" in scale and "1000000" in scale:
        r = ratio(scale["1000000"]["lookup_median_us"], scale["1000"]["lookup_median_us"])
        lines.append(("lookup at 1M <= 1.5x lookup at 1k", r <= 1.5, f"{r:.2f}x"))
    contention = result.get("contention", {}).get("resolve/nameplate_busy_handler")
    if contention:
        one = contention[0]["throughput_per_s"]
        eight = contention[-1]
        r = ratio(eight["throughput_per_s"], one)
        ok = r >= 0.5 and eight["errors"] == 0 and eight["duplicates"] == 0 and eight["max_ms"] < 100
        lines.append(("8 processes >= 0.5x single-process throughput, 0 errors, max resolve < 100 ms", ok,
                      f"{r:.2f}x, {eight['errors']} errors, {eight['duplicates']} duplicates, "
                      f"max {eight['max_ms']:.1f} ms"))
    predecessor = result.get("predecessor")
    if predecessor and "10000" in predecessor:
        for op, ours in (("lookup", "lookup"), ("resolve_create", "resolve_create")):
            r = ratio(predecessor["10000"][op]["median_us"], ops[ours]["median_us"])
            lines.append((f">= 1000x faster than LocalRegistryManager at 10k ({op})", r >= 1000, f"{r:,.0f}x"))
    return lines


def print_report(result: dict[str, Any]) -> None:
    ops = result["operations"]
    floor_select = ops["floor_select"]["median_us"]
    floor_insert = ops["floor_insert_commit"]["median_us"]
    print(f"\n{result['machine']}")
    print("\n| operation | median µs | vs floor |\n|---|---:|---:|")
    for key, value in ops.items():
        base = floor_insert if key in ("resolve_create", "floor_insert_commit", "register_validated",
                                       "acquire_release", "heartbeat") else floor_select
        if key in ("list_1k_of_one_kind", "floor_list_1k"):
            base = ops["floor_list_1k"]["median_us"]
        if key.startswith("select_") or key == "floor_capability_query":
            base = ops["floor_capability_query"]["median_us"]
        print(f"| {key} | {value['median_us']:.1f} | {ratio(value['median_us'], base):.1f}x |")
    if result.get("scale"):
        print("\n| entries | build s | lookup µs | floor select µs | resolve-create µs |\n|---:|---:|---:|---:|---:|")
        for size, row in result["scale"].items():
            print(f"| {int(size):,} | {row['build_seconds']:.1f} | {row['lookup_median_us']:.1f} | "
                  f"{row['floor_median_us']:.1f} | {row['resolve_create_median_us']:.1f} |")
    for key, rows in (result.get("contention") or {}).items():
        print(f"\n{key}\n| processes | ops/s | p50 ms | p99 ms | max ms | errors | duplicates |"
              "\n|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['processes']} | {row['throughput_per_s']:,.0f} | {row['p50_ms']:.2f} | "
                  f"{row['p99_ms']:.2f} | {row['max_ms']:.1f} | {row['errors']} | {row['duplicates']} |")
    if result.get("predecessor"):
        print("\n| LocalRegistryManager entries | lookup µs | resolve-create µs | 4-process race: resolves/s, "
              "errors, duplicates |\n|---:|---:|---:|---|")
        for size, row in result["predecessor"].items():
            race = row["race_4_processes"]
            print(f"| {int(size):,} | {row['lookup']['median_us']:,.0f} | {row['resolve_create']['median_us']:,.0f} | "
                  f"{race['throughput_per_s']:,.1f}/s, {race['errors']} errors, {race['duplicates']} duplicates |")
    if result.get("coordination"):
        print("\n| coordination | median |\n|---|---:|")
        for key, value in result["coordination"].items():
            unit = "ms" if key.endswith("_ms") else "µs"
            print(f"| {key} | {value['median_' + unit.replace('µ', 'u')]:.2f} {unit} |")
    print("\nTargets:")
    for text, ok, detail in targets(result):
        print(f"- {'met' if ok else 'MISSED'}: {text} ({detail})")


# -- a server database beside SQLite (--db URL) ------------------------------------------------------

RACE_NAMES = 300
RACE_ACQUIRES = 25


def _race_worker(barrier: Any, results: Any, index: int, spec: str) -> None:
    try:
        names = [f"race-{i}" for i in range(RACE_NAMES)]
        random.Random(index).shuffle(names)
        with Registry(spec, timeout=60, lock_delay=0) as registry:
            barrier.wait(timeout=60)
            ids = {name: registry.resolve(name, "node") for name in names}
            tokens = []
            for _ in range(RACE_ACQUIRES):
                lease = registry.acquire("race-shared", "node", wait=60)
                tokens.append(lease.token)
                lease.release()
        results.put((index, {"ids": ids, "tokens": tokens}))
    except BaseException as error:  # reported, so the parent counts it instead of hanging
        results.put((index, {"error": repr(error)}))


def bench_race(spec: str, processes: int = 8) -> dict[str, Any]:
    """``processes`` processes resolve the same 300 names in shuffled orders, then take turns on one lease."""
    with Registry(spec, timeout=60) as registry:
        registry.resolve("race-shared", "node")
    barrier, results = SPAWN.Barrier(processes), SPAWN.Queue()
    procs = [SPAWN.Process(target=_race_worker, args=(barrier, results, i, spec)) for i in range(processes)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=600)[1] for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    errors = [o["error"] for o in outcomes if "error" in o]
    good = [o for o in outcomes if "error" not in o]
    ids_per_name: dict[str, set[str]] = {}
    for outcome in good:
        for name, entry_id in outcome["ids"].items():
            ids_per_name.setdefault(name, set()).add(entry_id)
    tokens = sorted(t for o in good for t in o["tokens"])
    return {"processes": processes, "names": RACE_NAMES, "errors": len(errors), "first_error": errors[:1],
            "names_with_several_ids": sum(1 for ids in ids_per_name.values() if len(ids) > 1),
            "tokens_exactly_1_to_n": tokens == list(range(1, len(tokens) + 1)), "acquisitions": len(tokens),
            "seconds": elapsed}


def bench_backend(spec: str, quick: bool) -> dict[str, Any]:
    """The hot operations on one registry (``spec``: a file path or a server URL), one process."""
    n, reps = (500, 3) if quick else (2000, 5)
    results: dict[str, Any] = {}
    with Registry(spec, timeout=60) as registry:
        for i in range(1000):
            registry.resolve(f"n{i}", "node")
        results["lookup"] = per_op(lambda i: registry.lookup(f"n{i % 1000}", "node"), n, reps)
        results["resolve_existing"] = per_op(lambda i: registry.resolve(f"n{i % 1000}", "node"), n, reps)
        results["resolve_create"] = per_op(lambda i: registry.resolve(f"new-{i}", "node"), n // 5, reps)

        def acquire_release(i: int) -> None:
            registry.acquire(f"n{i % 200}", "node").release()

        acquire_release(0)  # opens the session outside the timing
        results["acquire_release"] = per_op(acquire_release, n // 5, reps)
    with Registry(spec, timeout=60, cache=False) as uncached:
        results["lookup_uncached"] = per_op(lambda i: uncached.lookup(f"n{i % 1000}", "node"), n, reps)
    results["race_8_processes"] = bench_race(spec)
    return results


def _server_schema(url: str) -> tuple[str, Callable[[], None]]:
    """A throwaway schema on the server for the run, and how to drop it."""
    import psycopg

    schema = f"nameplate_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", drop


def bench_server_beside_sqlite(url: str, work: Path, quick: bool) -> dict[str, Any]:
    spec, drop = _server_schema(url)
    try:
        server = bench_backend(spec, quick)
    finally:
        drop()
    return {"server": server, "sqlite": bench_backend(str(work / "beside.db"), quick)}


def print_backends(result: dict[str, Any]) -> None:
    server, lite = result["server"], result["sqlite"]
    print("\n| operation (µs, median) | server | SQLite |\n|---|---:|---:|")
    for key in ("lookup", "lookup_uncached", "resolve_existing", "resolve_create", "acquire_release"):
        print(f"| {key} | {server[key]['median_us']:,.1f} | {lite[key]['median_us']:,.1f} |")
    print("\n| 8-process race | server | SQLite |\n|---|---|---|")
    for key in ("names_with_several_ids", "tokens_exactly_1_to_n", "acquisitions", "errors", "seconds"):
        print(f"| {key} | {server['race_8_processes'][key]} | {lite['race_8_processes'][key]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs")
    parser.add_argument("--sections", default="operations,scale,contention,predecessor,coordination",
                        help="comma-separated subset of: operations, scale, contention, predecessor, "
                             "coordination")
    parser.add_argument("--sizes", default=None, help="entry counts for the scale section (default 1k,100k,1M)")
    parser.add_argument("--db", default=None, help="a postgresql:// URL: measure the hot operations and the "
                        "8-process race there (in a throwaway schema) beside a SQLite file, and only that")
    args = parser.parse_args()
    if args.db:
        with tempfile.TemporaryDirectory(prefix="nameplate-bench-") as tmp:
            backends = bench_server_beside_sqlite(args.db, Path(tmp), args.quick)
        Path(args.out).write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "backends": backends},
                                             indent=2))
        print_backends(backends)
        print(f"\nwrote {args.out}", file=sys.stderr)
        return
    sections = set(args.sections.split(","))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [1000, 100_000] if args.quick else [1000, 100_000, 1_000_000])
    result: dict[str, Any] = {
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"SQLite {sqlite3.sqlite_version}, {platform.platform()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(prefix="nameplate-bench-") as tmp:
        work = Path(tmp)
        result["operations"] = bench_operations(work, args.quick)
        if "scale" in sections:
            result["scale"] = bench_scale(work, sizes, args.quick)
        if "contention" in sections:
            result["contention"] = bench_contention(work, args.quick)
        if "predecessor" in sections:
            result["predecessor"] = bench_predecessor(work, args.quick)
        if "coordination" in sections:
            result["coordination"] = bench_coordination(work, args.quick)
    result["targets"] = [{"target": t, "met": ok, "measured": d} for t, ok, d in targets(result)]
    Path(args.out).write_text(json.dumps(result, indent=2))
    print_report(result)
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
