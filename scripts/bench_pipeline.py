#!/usr/bin/env python3
"""Seed 003's budgets on nameplate.compat.pipeline: step lookup < 1 ms and registration < 10 ms at p99,
with N processes contending (default 8).

    python scripts/bench_pipeline.py --processes 8 --seconds 3              # every process flat out
    python scripts/bench_pipeline.py --processes 8 --seconds 3 --rate 200   # 200 operations/s each

Every process opens its own Pipeline on one file (the legacy types registered at start, as the seed's
supervision tree does) and, for ``--seconds``, runs the executor's path: ``get_step_module`` of a random
registered step type (nine in ten operations) or ``register_step`` of a new step type of its own (one in
ten), while all the others do the same. Flat out, 8 processes on a 2-core machine are 4 runnable
processes per core, so a p99 there also measures the scheduler's time slices; ``--rate`` paces each
process (an executor does other work between lookups). Prints p50/p99/max per operation and whether
the budgets hold.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pct  # scripts/ is on sys.path when a script in it runs
from nameplate import Registry
from nameplate.compat.pipeline import Pipeline

SPAWN = multiprocessing.get_context("spawn")
SHARED_STEPS = 50
BUDGETS_MS = {"lookup": 1.0, "registration": 10.0}


def _worker(barrier: Any, results: Any, index: int, path: str, seconds: float, rate: float) -> None:
    latencies: dict[str, list[float]] = {"lookup": [], "registration": []}
    errors: list[str] = []
    rng = random.Random(index)
    try:
        with Registry(path, timeout=30) as registry:
            pipeline = Pipeline(registry)
            barrier.wait(timeout=60)
            start = time.perf_counter()
            deadline = start + seconds
            counter = done = 0
            while time.perf_counter() < deadline:
                if rate > 0:  # the next operation's slot: sleep until it comes (never catch up in bursts)
                    time.sleep(max(0.0, start + done / rate - time.perf_counter()))
                done += 1
                register = rng.random() < 0.1
                started = time.perf_counter()
                try:
                    if register:
                        pipeline.steps.register_step(f"p{index}_step_{counter}", "json:JSONEncoder",
                                                     metadata={"required_fields": ["prompt"]})
                        counter += 1
                    else:
                        status, _ = pipeline.steps.get_step_module(f"shared_{rng.randrange(SHARED_STEPS)}")
                        if status != "ok":
                            errors.append(f"lookup answered {status}")
                except Exception as error:  # counted and reported: errors must be 0
                    errors.append(repr(error))
                latencies["registration" if register else "lookup"].append(time.perf_counter() - started)
        results.put((index, {"latencies": latencies, "errors": errors}))
    except BaseException as error:
        results.put((index, {"latencies": latencies, "errors": errors + [repr(error)]}))


def run(path: Path, processes: int, seconds: float, rate: float) -> dict[str, Any]:
    with Pipeline(Registry(path)) as pipeline:
        for n in range(SHARED_STEPS):
            pipeline.steps.register_step(f"shared_{n}", "json:JSONEncoder")
    barrier = SPAWN.Barrier(processes)
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_worker, args=(barrier, queue, i, str(path), seconds, rate))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=seconds + 120)[1] for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    report: dict[str, Any] = {"processes": processes, "seconds": seconds, "rate_per_process": rate,
                              "errors": sum(len(o["errors"]) for o in outcomes),
                              "error_samples": [e for o in outcomes for e in o["errors"]][:3]}
    for operation in ("lookup", "registration"):
        values = [v for o in outcomes for v in o["latencies"][operation]]
        report[operation] = {"ops": len(values), "p50_ms": pct(values, 0.5) * 1e3, "p99_ms": pct(values, 0.99) * 1e3,
                             "max_ms": max(values) * 1e3 if values else float("nan")}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0.0, help="operations per second per process (0: flat out)")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = run(Path(work) / "bench.db", args.processes, args.seconds, args.rate)
    for operation, budget in BUDGETS_MS.items():
        figures = report[operation]
        verdict = "Met" if figures["p99_ms"] < budget else "MISSED"
        print(f"{operation:12} ops={figures['ops']:6}  p50={figures['p50_ms']:.3f} ms  p99={figures['p99_ms']:.3f} ms"
              f"  max={figures['max_ms']:.1f} ms  budget p99 < {budget:g} ms: {verdict}")
    pace = f"{args.rate:g}/s each" if args.rate > 0 else "flat out"
    print(f"processes={report['processes']} ({pace}) seconds={report['seconds']:g} errors={report['errors']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    met = all(report[op]["p99_ms"] < budget for op, budget in BUDGETS_MS.items())
    return 0 if met and report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
