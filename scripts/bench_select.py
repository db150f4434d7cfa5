#!/usr/bin/env python3
"""How long ``find`` and ``select`` take with many providers (issue 4's closing number).

    python scripts/bench_select.py                    # 10,000 providers, every strategy
    python scripts/bench_select.py --providers 1000 --reps 7

Providers get capabilities so that a requirement matches about 1 %, 10 % and 100 % of them (``rare``,
``common`` with ``llm``, none). One in 200 is owned by this process's session (half of the rare ones),
so ``healthiest`` has live owners to judge in every set. Each figure is the median per call over
``reps`` timed loops; this machine's noise is about ±50 % between runs (see STYLE.md), so compare
figures of one run with each other.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nameplate import Registry
from nameplate._strategies import STRATEGIES


def per_call_ms(fn: Callable[[], Any], calls: int, reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Registry(Path(tmp) / "bench.db") as registry:
        registry.session(label="bench").report(status="healthy")
        started = time.perf_counter()
        items = []
        for i in range(args.providers):
            caps = ["llm"]
            if i % 10 == 0:
                caps.append("common")
            if i % 100 == 0:
                caps.append("rare")
            items.append({"name": f"provider{i:06d}", "kind": "provider", "capabilities": caps,
                          "owned": i % 200 == 0})
        registry.register_many(items)
        print(f"registered {args.providers} providers in {time.perf_counter() - started:.2f} s (one batch)")
        for requires in ({"rare"}, {"common", "llm"}, set()):
            label = ",".join(sorted(requires)) or "(no requirement)"
            matched = len(registry.find("provider", requires))
            find_ms = per_call_ms(lambda r=requires: registry.find("provider", r), args.calls, args.reps)
            print(f"\nrequires {label}: {matched} matches; find {find_ms:.2f} ms")
            for strategy in STRATEGIES:
                ms = per_call_ms(lambda r=requires, s=strategy: registry.select("provider", r, s), args.calls,
                                 args.reps)
                print(f"  select {strategy:<24} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
