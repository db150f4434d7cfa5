#!/usr/bin/env python3
"""The README's Performance section, rendered from one ``scripts/bench.py`` result.

    python scripts/bench.py --out scripts/bench-result.json     # a full run
    python scripts/bench_report.py scripts/bench-result.json --write README.md

Every figure of the section comes from the JSON, so the README says what a run printed: the run kept
in ``scripts/bench-result.json``, which ``tests/test_readme.py`` renders again and holds the README to.
The section lies between the two marker comments; the text around them is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- bench-report:start (scripts/bench_report.py writes this part; do not edit by hand) -->"
END = "<!-- bench-report:end -->"


def _us(value: float) -> str:
    return f"{value:,.1f} µs" if value < 10_000 else f"{value / 1000:,.1f} ms"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def render(result: dict[str, Any]) -> str:
    """The Markdown between the markers, for ``result`` (the JSON ``bench.py --out`` wrote)."""
    ops = result["operations"]
    out: list[str] = []
    kind = "A `--quick` run" if result.get("quick") else "A full run"
    out.append(f"{kind} of `python scripts/bench.py` on {result['started']}, {result['seconds']:.0f} s; "
               f"{result['machine']}.")
    out.append("")
    point, insert = ops["floor_select"]["median_us"], ops["floor_insert_commit"]
    out.append("| operation (p50 of the timed loops) | nameplate | floor (plain sqlite3, same run) | ratio |")
    out.append("|---|---:|---|---:|")
    rows = [
        ("lookup, cached (a working set of 1,000 names)", ops["lookup"]["median_us"], "point select", point),
        ("lookup, uncached (`cache=False`)", ops["lookup_uncached"]["median_us"], "point select", point),
        ("get (full entry; never cached)", ops["get"]["median_us"], "point select", point),
        ("resolve, existing name (10,000 names cycling)", ops["resolve_existing"]["median_us"], "point select", point),
        ("resolve, new name (create)", ops["resolve_create"]["median_us"], "insert + commit", insert["median_us"]),
        ("register with validation (step)", ops["register_validated"]["median_us"], "insert + commit",
         insert["median_us"]),
        ("acquire + release", ops["acquire_release"]["median_us"], "insert + commit", insert["median_us"]),
        ("one heartbeat (renew)", ops["heartbeat"]["median_us"], "insert + commit", insert["median_us"]),
        ("list 10,000 entries of one kind", ops["list_10k"]["median_us"], "plain select of the rows",
         ops["floor_list_10k"]["median_us"]),
    ]
    for label, ours, floor_label, floor in rows:
        out.append(f"| {label} | {_us(ours)} | {floor_label}: {_us(floor)} | {_ratio(ours, floor)} |")
    out.append("")
    create = ops["resolve_create"]
    out.append(f"Means of the interleaved write loops: resolve-create {_us(create['mean_us'])} (p99 "
               f"{_us(create['p99_us'])}) against insert + commit {_us(insert['mean_us'])}; WAL pages written "
               f"per create {ops['pages_per_create']:.1f}, per bare insert {ops['floor_pages_per_insert']:.1f}.")
    if "create_sql_replay" in ops:
        replay = ops["create_sql_replay"]
        out.append(f"A create's own SQL replayed as raw `sqlite3` statements (both probes, the event, the entry): "
                   f"{_us(replay['mean_us'])}, {_ratio(replay['mean_us'], insert['mean_us'])} the floor; the rest "
                   f"of resolve-create's {_us(create['mean_us'])} is Python.")
    if "diskcache_get_add_get" in ops:
        dc, lock = ops["diskcache_get_add_get"], ops["diskcache_lock"]
        out.append(f"What a diskcache user would write instead, same run: get/add/get {_us(dc['mean_us'])} "
                   f"(resolve-create {_us(create['mean_us'])}); `diskcache.Lock` acquire + release "
                   f"{_us(lock['mean_us'])} (nameplate's {_us(ops['acquire_release']['mean_us'])}, which also "
                   "logs both changes and fences the lease).")
    picks = ", ".join(f"{s.replace('_', ' ')} {ops[f'select_{s}_10k']['mean_us']:.1f} µs"
                      for s in ("first", "round_robin", "random"))
    out.append(f"`select` among 10,000 matching providers (mean): {picks}.")
    scale = result.get("scale") or {}
    if scale:
        out.append("")
        out.append("Scale (files built by a bulk insert; uncached lookups of random names in interleaved rounds):")
        out.append("")
        out.append("| entries | file built in | lookup | floor point select | resolve-create |")
        out.append("|---:|---:|---:|---:|---:|")
        for size, row in sorted(scale.items(), key=lambda item: int(item[0])):
            out.append(f"| {int(size):,} | {row['build_seconds']:.1f} s | {_us(row['lookup_median_us'])} | "
                       f"{_us(row['floor_median_us'])} | {_us(row['resolve_create_median_us'])} |")
    streaming = result.get("streaming")
    if streaming:
        out.append("")
        out.append(f"Streaming, {streaming['entries']:,} entries, each command in a fresh process: export "
                   f"{streaming['export_us_per_entry']:.1f} µs an entry at a peak of "
                   f"{streaming['export_peak_mib']:.0f} MiB, import {streaming['import_us_per_entry']:.1f} µs an "
                   f"entry at {streaming['import_peak_mib']:.0f} MiB (the interpreter alone: "
                   f"{streaming['interpreter_peak_mib']:.0f} MiB).")
    contention = result.get("contention") or {}
    if contention:
        out.append("")
        out.append("Contention: N processes call flat out for a few seconds each (`resolve`: 80 % existing "
                   "names, 20 % new names all of them race to create; `acquire_release` on 50 shared entries; "
                   "`register` new steps; `mixed`: 90 % lookups, 10 % registrations), and the same 8 "
                   "processes once more with the writer line off, each writer retrying the lock on its own:")
        out.append("")
        out.append("| workload | processes | writer line | calls | ops/s | p50 | p99 | max | errors | duplicates |")
        out.append("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
        for operation, runs in contention.items():
            for run in runs:
                line = "yes" if run.get("writer_line", True) else "**no**"
                for label in ("resolve", "acquire_release", "register", "lookup"):
                    if label in run:
                        cell = run[label]
                        out.append(f"| {operation} | {run['processes']} | {line} | {label} | "
                                   f"{cell['throughput_per_s']:,.0f} | {cell['p50_ms']:.2f} ms | "
                                   f"{cell['p99_ms']:.2f} ms | {cell['max_ms']:.1f} ms | {run['errors']} | "
                                   f"{run['duplicates']} |")
    predecessor = result.get("predecessor")
    if predecessor:
        out.append("")
        out.append("The predecessor, MADSci's `LocalRegistryManager` (one JSON file and a file lock, rewritten on "
                   "every change), in the same run:")
        out.append("")
        out.append("| entries | LocalRegistryManager lookup | LocalRegistryManager resolve-create "
                   "| its 4-process race |")
        out.append("|---:|---:|---:|---|")
        for size, row in sorted(predecessor.items(), key=lambda item: int(item[0])):
            race = row["race_4_processes"]
            out.append(f"| {int(size):,} | {_us(row['lookup']['median_us'])} | "
                       f"{_us(row['resolve_create']['median_us'])} "
                       f"| {race['throughput_per_s']:,.1f} resolves/s, {race['errors']} errors, "
                       f"{race['duplicates']} duplicates |")
    coordination = result.get("coordination")
    if coordination:
        out.append("")
        out.append("| coordination (10,000 entries of one kind) | p50 |")
        out.append("|---|---:|")
        for key, value in coordination.items():
            if key.endswith("_ms"):
                out.append(f"| {key[:-3].replace('_', ' ')} | {value['median_ms']:.2f} ms |")
            else:
                out.append(f"| {key.replace('_', ' ')} | {_us(value['median_us'])} |")
    out.append("")
    out.append("Target lines, as the run printed them:")
    out.append("")
    for item in result["targets"]:
        mark = "MET" if item["met"] else "**MISSED**"
        out.append(f"- {mark} {item['target']}: {item['measured']} (target {item['bound']})")
    return "\n".join(out)


def section_of(readme: str) -> str:
    """The text between the markers of ``readme`` (raises ValueError when they are missing)."""
    start = readme.index(START) + len(START)
    return readme[start:readme.index(END, start)].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="the JSON that scripts/bench.py --out wrote")
    parser.add_argument("--write", metavar="README", help="replace the section of this file instead of printing it")
    args = parser.parse_args()
    text = render(json.loads(Path(args.result).read_text()))
    if not args.write:
        print(text)
        return
    path = Path(args.write)
    readme = path.read_text()
    if START not in readme or END not in readme.split(START, 1)[1]:
        sys.exit(f"{path} has no {START!r} ... {END!r} markers; add them where the section goes")
    head, rest = readme.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(f"wrote the Performance section of {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
