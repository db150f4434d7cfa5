#!/usr/bin/env python3
"""A Jepsen-style chaos run for nameplate: real worker processes, SIGKILL and SIGSTOP, then a checker.

    python scripts/chaos.py --rounds N --workers K --seed S --kills M [--db DIR] [--sabotage {fence,guard}] [--keep]

Per round: a fresh registry file with a few layered workspaces; K worker processes (this very script
with ``--worker``) doing a seeded random mix of every write; a killer in this process that wakes every
20-200 ms and SIGKILLs a random worker (starting a replacement, so K stay busy) until M kills happened,
and SIGSTOPs some workers (preferably lease holders) for longer than their session ttl before
SIGCONTing them. The killer picks among workers that opened the registry (a replacement needs about
0.3 s of CPU to start), now and then one still starting up, and skips a wake-up when all are starting,
so on 2 cores kills come every 0.1-0.3 s; it also waits for the registry to move on (a new event)
between two kills, so that a worker stopped inside a write transaction does not use up the kills on
workers waiting for its lock. A stopped lease holder stays stopped until its session was reaped (at
most 4 ttl), so that it wakes up holding leases it lost. Workers aim part of their writes at entries that `locks()`
lists (what the lease guard must refuse), break leases it lists, and after a SIGCONT carry on writing
with the leases they held. Each worker appends one fsynced JSON line per call it saw return (so a call
cut short by SIGKILL leaves no line: unacknowledged). At the end of the round every worker is stopped (SIGTERM or
SIGKILL), this process calls ``reap()``, and the checker holds the database, its event log and the
workers' logs against each other. Output: one ``VIOLATION ...`` line per violation, then exactly one
summary line ``rounds=<n> kills=<n> ops=<n> violations=<n>``; the exit status is 1 when there was any
violation. Progress goes to stderr.

The checker replays the event log into a model (rows per (workspace, kind, name), workspace parents,
leases, sessions) and checks:

  1  PRAGMA integrity_check is ok and foreign_key_check is empty (after the crashes and after reap)
  2  one row per (workspace, kind, name); a create never happens while the name is visible
  3  every id a resolve/lookup returned was the name's id (through the layers) at some revision
     between the ones read just before and just after the call
  4  the final entry, lease and session tables equal what the replayed log implies, and every event
     applies to the model (an event that does not fit means some change was not logged)
  5  per entry: lease acquisitions and ends (release/expire/free/break) alternate, tokens grow by one
  6  no fenced write landed with a stale token; every acknowledged write is in the log with its value;
     no write reported as failed landed
  7  every content change of a leased entry was made by the lease's holding session
  8  after reap(): no live session and no lease belongs to a dead process; no ephemeral entry
     outlives its session
  w  worker health: no unexpected exception class, no traceback on a worker's stderr, no worker
     that ignores SIGTERM

``--sabotage fence`` / ``--sabotage guard`` make the workers skip the fencing-token check / the lease
guard of entry writes (see :func:`apply_sabotage`), so a run must then report violations.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Self, TextIO

# The session ttl and lock-delay are short so that a SIGSTOP of a second or two outlives a session;
# the busy timeout is generous because a worker stopped inside a write transaction keeps the write
# lock for the whole stop.
TTL = 1.0
LOCK_DELAY = 0.3
BUSY_TIMEOUT = 30.0

CORE = "core"
#: The layers every round starts with: two children of core and a grandchild.
WORKSPACE_PARENTS: dict[str, str] = {"lab": CORE, "dev": CORE, "dev_alice": "dev"}
WORKSPACE_WEIGHTS: dict[str, int] = {CORE: 4, "lab": 2, "dev": 2, "dev_alice": 2}
#: A small pool, so that processes race on the same names.
SHARED_NAMES = ("alpha", "beta", "gamma", "delta")
KINDS = ("provider", "node")
CAPABILITIES = ("llm", "chat", "vision")
SABOTAGE_MODES = ("fence", "guard")

#: How long a SIGSTOP lasts: always longer than the ttl, so the stopped session can be reaped. A
#: stopped lease holder stays stopped until its session is no longer live (someone reaped it), at
#: most STOP_HOLDER_MAX_SECONDS: then it wakes up holding leases it lost, the case fencing is for.
STOP_SECONDS = (TTL * 1.3, TTL * 2.5)
STOP_HOLDER_MAX_SECONDS = TTL * 4
#: The killer's pause between two actions, in seconds.
KILL_INTERVAL = (0.02, 0.2)
#: Share of the killer's actions that are a SIGSTOP instead of a SIGKILL (while nobody is stopped).
STOP_SHARE = 0.12
#: A worker given SIGTERM at the end of a round must have exited by then.
GRACEFUL_EXIT_SECONDS = 10.0
#: After the last kill (and the last SIGCONT) the workers run this much longer, so that resumed
#: workers act on what they held before the stop.
SETTLE_SECONDS = 0.6


# =====================================================================================================
# Sabotage: the one place that knows which internals to break.
# =====================================================================================================


def apply_sabotage(mode: str | None) -> None:
    """Switch off one safety mechanism in this worker process, to show that the checker can fail.

    Internals touched (update this function when they move):

    - ``fence``: ``nameplate._lease.Lease.fence``, the check inside a fenced write's transaction that
      the lease row still carries this session and token. Skipped, a holder whose lease expired or was
      broken writes anyway (while nobody else holds the entry).
    - ``guard``: ``nameplate._leasing.Leasing.guard``, the one lease guard of entry writes, which
      refuses writes (update, resolve's metadata merge, rename, delete, register, promote) by a
      session that does not hold the entry's lease. Skipped, anyone writes a leased entry.
    """
    if mode is None:
        return
    if mode == "fence":
        from nameplate._lease import Lease

        def fence_check_skipped(self: Lease, tx: Any) -> None:
            return None

        Lease.fence = fence_check_skipped
    elif mode == "guard":
        from nameplate._leasing import Leasing

        def lease_guard_skipped(self: Leasing, *args: Any, **kwargs: Any) -> None:
            return None

        if not callable(vars(Leasing).get("guard")):
            raise RuntimeError("apply_sabotage('guard'): Leasing has no lease guard method any more; "
                               "update apply_sabotage to the new name")
        Leasing.guard = lease_guard_skipped  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown sabotage mode {mode!r}")


# =====================================================================================================
# Worker process
# =====================================================================================================


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the chaos parent dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the main loop's getppid() check is the fallback
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


class OpLog:
    """One JSON line per call, flushed and fsynced before the worker goes on."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


@dataclass
class HeldLease:
    """A lease this worker keeps across several operations (so a SIGSTOP or a rival may catch it)."""

    lease: Any  # nameplate.Lease
    workspace: str  # the entry's own workspace (where a fenced write must name it)
    kind: str
    name: str  # its current name (the worker may rename it while holding it)
    ops_left: int


class Worker:
    """A seeded random mix of every write against one registry, each call logged once it returned."""

    def __init__(self, db: Path, log_path: Path, slot: int, seed: int, parent_pid: int) -> None:
        from nameplate import (
            ConflictError,
            EntryNotFoundError,
            LeaseHeldError,
            LeaseLost,
            NameTakenError,
            NotLeaseHolderError,
            RegistryBusyError,
            WorkspaceError,
        )

        self.db = db
        self.slot = slot
        self.rng = random.Random(seed)
        self.tag = f"s{slot}.{os.getpid()}"
        self.parent_pid = parent_pid
        self.seq = 0
        self.log = OpLog(log_path)
        self.stop_requested = False
        self.resumed = False  # set by SIGCONT
        self.leased: list[tuple[str, str, str]] = []  # keys leased at the last locks() read
        self.locks_read_at = -100
        self.held: list[HeldLease] = []
        self.imported: list[dict[str, Any]] = []
        # ConflictError covers its subclasses (AmbiguousNameError, KindInUseError, ...) and an
        # import that collides with the registry; the others are listed to say what we expect.
        self.expected: tuple[type[BaseException], ...] = (
            NameTakenError, EntryNotFoundError, LeaseHeldError, LeaseLost, NotLeaseHolderError, RegistryBusyError,
            WorkspaceError, ConflictError)
        self.registry: Any = None

    # -- logging one call ----------------------------------------------------------------------------

    def revision(self) -> int | None:
        from nameplate import NameplateError

        if self.registry is None or self.registry.closed:
            return None  # around open() and close(): there is no open registry to ask
        for _ in range(3):
            try:
                return int(self.registry.revision)
            except NameplateError:
                time.sleep(0.01)
        return None

    def call(self, op: str, args: dict[str, Any], action: Callable[[], Any],
             summarize: Callable[[Any], Any] = lambda result: None,
             also_expected: tuple[type[BaseException], ...] = ()) -> tuple[bool, Any]:
        """Run one registry call and log what it returned (or raised), with the revisions around it."""
        from nameplate import NameplateError

        self.seq += 1
        record: dict[str, Any] = {"tag": self.tag, "slot": self.slot, "seq": self.seq, "op": op, "args": args}
        record["before"] = self.revision()
        try:
            result = action()
        except NameplateError as error:
            record["after"] = self.revision()
            expected = isinstance(error, self.expected + also_expected)
            record.update(ok=False, error=type(error).__name__, message=str(error)[:400], expected=expected)
            if not expected:
                record["traceback"] = traceback.format_exc()
            self.log.write(record)
            return False, error
        except Exception as error:  # noqa: BLE001 -- any other class is a violation: logged for the checker
            record["after"] = self.revision()
            record.update(ok=False, error=type(error).__name__, message=str(error)[:400], expected=False,
                          traceback=traceback.format_exc())
            self.log.write(record)
            return False, error
        record["after"] = self.revision()
        record.update(ok=True, result=summarize(result))
        self.log.write(record)
        return True, result

    # -- choices -------------------------------------------------------------------------------------

    def nonce(self) -> str:
        """A value no other call ever writes, so every write is a change and can be traced in the log."""
        return f"{self.tag}#{self.seq + 1}"

    def workspace(self, non_core: bool = False) -> str:
        names = [w for w in WORKSPACE_WEIGHTS if not (non_core and w == CORE)]
        return self.rng.choices(names, weights=[WORKSPACE_WEIGHTS[w] for w in names])[0]

    def name(self) -> str:
        if self.rng.random() < 0.65:
            return self.rng.choice(SHARED_NAMES)
        return f"p{self.slot}x{self.rng.randrange(3)}"

    def kind(self) -> str:
        return self.rng.choice(KINDS)

    def target(self, non_core: bool = False) -> tuple[str, str, str]:
        """(workspace, kind, name) of an entry write: often one that some session holds a lease on
        (from a `locks()` read refreshed every few calls), since those are what the guard must refuse."""
        if self.seq - self.locks_read_at >= 8:
            self.locks_read_at = self.seq
            try:
                self.leased = [(h.workspace, h.kind, h.name) for h in self.registry.locks()]
            except self.expected:  # a busy registry: aim at random names this time
                self.leased = []
        leased = [key for key in self.leased if not (non_core and key[0] == CORE)]
        if leased and self.rng.random() < 0.35:
            return self.rng.choice(leased)
        return self.workspace(non_core), self.kind(), self.name()

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"w": self.nonce()}
        if self.rng.random() < 0.3:
            meta["color"] = self.rng.choice(("red", "green", "blue"))
        return meta

    # -- the operations ------------------------------------------------------------------------------

    def op_resolve(self) -> None:
        ws, kind, name = self.target()
        meta = self.metadata() if self.rng.random() < 0.5 else None
        ephemeral = self.rng.random() < 0.15
        self.call("resolve", {"workspace": ws, "kind": kind, "name": name, "metadata": meta, "ephemeral": ephemeral},
                  lambda: self.registry.resolve(name, kind, meta, workspace=ws, ephemeral=ephemeral),
                  lambda entry_id: {"id": entry_id})

    def op_lookup(self) -> None:
        ws, kind, name = self.workspace(), self.kind(), self.name()
        self.call("lookup", {"workspace": ws, "kind": kind, "name": name},
                  lambda: self.registry.lookup(name, kind, workspace=ws), lambda entry_id: {"id": entry_id})

    def op_rename(self) -> None:
        (ws, kind, old), new = self.target(), self.name()
        self.call("rename", {"workspace": ws, "kind": kind, "old": old, "new": new},
                  lambda: self.registry.rename(old, new, kind, workspace=ws), lambda entry_id: {"id": entry_id})

    def op_delete(self) -> None:
        ws, kind, name = self.target()
        self.call("delete", {"workspace": ws, "kind": kind, "name": name},
                  lambda: self.registry.delete(name, kind, workspace=ws), lambda entry: {"id": entry.id})

    def op_update(self) -> None:
        ws, kind, name = self.target()
        meta, merge = self.metadata(), self.rng.random() < 0.5
        self.call("update", {"workspace": ws, "kind": kind, "name": name, "metadata": meta, "merge": merge},
                  lambda: self.registry.update(name, kind, metadata=meta, merge=merge, workspace=ws),
                  lambda entry: {"id": entry.id, "metadata": dict(entry.metadata)})

    def op_register(self) -> None:
        ws, kind, name = self.target()
        definition = None if self.rng.random() < 0.3 else {"description": f"v{self.rng.randrange(3)}"}
        capabilities = sorted(self.rng.sample(CAPABILITIES, self.rng.randrange(len(CAPABILITIES) + 1)))
        meta = self.metadata() if self.rng.random() < 0.4 else None
        on_conflict = self.rng.choice(("error", "replace", "keep"))
        self.call("register", {"workspace": ws, "kind": kind, "name": name, "definition": definition,
                               "capabilities": capabilities, "metadata": meta, "on_conflict": on_conflict},
                  lambda: self.registry.register(name, kind, definition, capabilities=capabilities, metadata=meta,
                                                 on_conflict=on_conflict, workspace=ws),
                  lambda entry: {"id": entry.id})

    def op_hide(self) -> None:
        ws, kind, name = self.workspace(non_core=True), self.kind(), self.name()
        self.call("hide", {"workspace": ws, "kind": kind, "name": name},
                  lambda: self.registry.hide(name, kind, workspace=ws), lambda entry_id: {"id": entry_id})

    def op_unhide(self) -> None:
        ws, kind, name = self.workspace(non_core=True), self.kind(), self.name()
        self.call("unhide", {"workspace": ws, "kind": kind, "name": name},
                  lambda: self.registry.unhide(name, kind, workspace=ws))

    def op_promote(self) -> None:
        ws, kind, name = self.target(non_core=True)
        replace = self.rng.random() < 0.5
        self.call("promote", {"workspace": ws, "kind": kind, "name": name, "replace": replace},
                  lambda: self.registry.promote(name, kind, workspace=ws, replace=replace),
                  lambda entry: {"id": entry.id, "workspace": entry.workspace})

    def acquire(self) -> HeldLease | None:
        """Take a lease with a small wait, sometimes through ``resolve(..., lock=True)``."""
        ws, kind, name = self.workspace(), self.kind(), self.name()
        wait = self.rng.choice((None, 0.02, 0.1, 0.3))
        args = {"workspace": ws, "kind": kind, "name": name, "wait": wait}
        if self.rng.random() < 0.2:
            def resolve_and_lock() -> Any:
                self.registry.resolve(name, kind, workspace=ws, lock=True, wait=wait)
                return self.registry.lease(name, kind, workspace=ws)
            ok, lease = self.call("resolve_lock", args, resolve_and_lock, _lease_summary)
        else:
            ok, lease = self.call("acquire", args, lambda: self.registry.acquire(name, kind, wait, workspace=ws),
                                  _lease_summary)
        if not ok or lease is None:
            return None
        # Acquiring a lease this worker already holds hands back the same Lease (re-entrant: it then
        # owes one more release, and only the last release gives the lease up in the database).
        return HeldLease(lease, lease.workspace, lease.kind, name, ops_left=0)

    def fenced_write(self, held: HeldLease) -> bool:
        """One fenced metadata write; False once the lease is known lost."""
        from nameplate import InvalidInputError, LeaseLost

        lease, meta = held.lease, self.metadata()
        args = {"workspace": held.workspace, "kind": held.kind, "name": held.name, "metadata": meta,
                "token": lease.token, "entry_id": lease.entry_id, "session": lease.session_id}
        # InvalidInputError: the name now belongs to another entry than the leased one (after a break,
        # a rename and a new entry of that name): the registry refuses the mismatched lease.
        ok, result = self.call("fenced_update", args,
                               lambda: self.registry.update(held.name, held.kind, metadata=meta, lease=lease,
                                                            workspace=held.workspace),
                               lambda entry: {"id": entry.id, "metadata": dict(entry.metadata)},
                               also_expected=(InvalidInputError,))
        return ok or not isinstance(result, LeaseLost)

    def release(self, held: HeldLease) -> None:
        """Release one acquisition, with the Lease or by name. ``gave_up`` in the log: this release
        ended the lease (the library's own answer, read right after the call; a re-entered lease
        needs one release per acquisition)."""
        lease = held.lease
        args = {"workspace": held.workspace, "kind": held.kind, "name": held.name, "token": lease.token,
                "entry_id": lease.entry_id, "session": lease.session_id}

        def outcome(released: bool) -> dict[str, bool]:
            return {"released": released, "gave_up": released and not lease.held}

        if self.rng.random() < 0.5:
            self.call("release", args, lease.release, outcome)
            return
        ok, released = self.call("release", {**args, "by_name": True},
                                 lambda: self.registry.release(held.name, held.kind, workspace=held.workspace),
                                 outcome)
        if ok and not released and lease.held:
            # The name no longer leads to the leased entry (this worker renamed or promoted it, or
            # another entry took the name): give the lease itself back instead.
            self.call("release", args, lease.release, outcome)

    def op_lease_cycle(self) -> None:
        """acquire -> fenced write(s), sometimes across a sleep a SIGSTOP may catch -> release."""
        held = self.acquire()
        if held is None:
            return
        for _ in range(self.rng.randint(1, 3)):
            if self.rng.random() < 0.08:  # a window for a SIGSTOP, a rival's break or the ttl
                time.sleep(self.rng.uniform(0.02, 0.2))
            if not self.fenced_write(held):
                break
        self.release(held)

    def op_hold(self) -> None:
        held = self.acquire()
        if held is not None:
            held.ops_left = self.rng.randint(3, 10)
            self.held.append(held)

    def op_held_write(self) -> None:
        held = self.rng.choice(self.held)
        if self.rng.random() < 0.1:
            time.sleep(self.rng.uniform(0.02, 0.15))
        self.fenced_write(held)

    def op_held_change(self) -> None:
        """The holder itself renames or deletes the entry it holds (allowed: it is the holder)."""
        held = self.rng.choice(self.held)
        if self.rng.random() < 0.5:
            new = self.name()
            ok, _ = self.call("rename", {"workspace": held.workspace, "kind": held.kind, "old": held.name,
                                         "new": new, "holding": True},
                              lambda: self.registry.rename(held.name, new, held.kind, workspace=held.workspace),
                              lambda entry_id: {"id": entry_id})
            if ok:
                held.name = new
        else:
            self.call("delete", {"workspace": held.workspace, "kind": held.kind, "name": held.name, "holding": True},
                      lambda: self.registry.delete(held.name, held.kind, workspace=held.workspace),
                      lambda entry: {"id": entry.id})

    def op_force_release(self) -> None:
        ws, kind, name = self.workspace(), self.kind(), self.name()
        if self.rng.random() < 0.5:  # as an operator would: break a lease that `locks()` lists
            ok, locks = self.call("locks", {}, self.registry.locks, lambda held: [h.to_dict() for h in held])
            if ok and locks:
                chosen = self.rng.choice(locks)
                ws, kind, name = chosen.workspace, chosen.kind, chosen.name
        # On a lease of this very worker, release(force=True) is its own release: of a re-entered lease
        # it gives up one acquisition only, so the log says which of its leases it still holds after.
        self.call("force_release", {"workspace": ws, "kind": kind, "name": name},
                  lambda: self.registry.release(name, kind, force=True, workspace=ws),
                  lambda released: {"released": released, "own_leases_held": sorted(
                      {held.lease.entry_id for held in self.held if held.lease.held})})

    def op_import(self) -> None:
        if self.imported and self.rng.random() < 0.25:
            document = self.rng.choice(self.imported)  # the same ids again: kept, or refused if moved
        else:
            document = self.document()
            self.imported.append(document)
        self.call("import", {"document": document}, lambda: self.registry.import_document(document),
                  lambda plan: {"applied": plan.applied, "added": plan.added, "kept": plan.kept,
                                "revision": plan.revision})

    def document(self) -> dict[str, Any]:
        """A small nameplate-format document (see ``_documents.py``), merged into the registry."""
        from ulid import ULID

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entries: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        for _ in range(self.rng.randint(1, 2)):
            key = (self.workspace(), self.kind(), self.name())
            if key in seen:
                continue
            seen.add(key)
            entries.append({"id": str(ULID()), "workspace": key[0], "kind": key[1], "name": key[2],
                            "metadata": {"imported": self.nonce()}, "capabilities": [], "definition": None,
                            "target": None, "created_at": stamp, "updated_at": stamp, "last_seen_at": stamp})
        tombstones = []
        if self.rng.random() < 0.2:
            tombstones.append({"workspace": self.workspace(non_core=True), "kind": self.kind(), "name": self.name()})
            if tuple(tombstones[0].values()) in seen:
                tombstones.clear()
        return {"format": "nameplate-export", "version": 1, "workspaces": [], "kinds": [], "entries": entries,
                "tombstones": tombstones}

    # -- main loop -----------------------------------------------------------------------------------

    def after_resume(self) -> None:
        """Woken by SIGCONT: carry on with the leases held before the stop, as a paused process
        would. Its session may have expired meanwhile: these writes must then fail (fencing)."""
        self.resumed = False
        for held in list(self.held):
            self.fenced_write(held)

    def step(self) -> None:
        if self.resumed:
            self.after_resume()
        for held in list(self.held):  # holds end after a few operations
            held.ops_left -= 1
            if held.ops_left <= 0:
                self.held.remove(held)
                self.release(held)
        ops: list[tuple[Callable[[], None], int]] = [
            (self.op_resolve, 20), (self.op_lookup, 12), (self.op_rename, 5), (self.op_delete, 5),
            (self.op_update, 7), (self.op_register, 7), (self.op_hide, 4), (self.op_unhide, 3), (self.op_promote, 3),
            (self.op_lease_cycle, 14), (self.op_hold, 4), (self.op_force_release, 5), (self.op_import, 3)]
        if self.held:
            ops += [(self.op_held_write, 12), (self.op_held_change, 2)]
        operation = self.rng.choices([op for op, _ in ops], weights=[weight for _, weight in ops])[0]
        operation()

    def run(self, sabotage: str | None) -> None:
        from nameplate import Registry

        apply_sabotage(sabotage)
        while True:  # an open that fails (busy, say) is logged like any call, then tried again
            if self.stop_requested or os.getppid() != self.parent_pid:
                self.log.close()
                return
            ok, registry = self.call("open", {"sabotage": sabotage},
                                     lambda: Registry(self.db, ttl=TTL, lock_delay=LOCK_DELAY, timeout=BUSY_TIMEOUT,
                                                      label=f"chaos-{self.tag}"))
            if ok:
                break
            time.sleep(0.05)
        self.registry = registry
        try:
            while not self.stop_requested and os.getppid() == self.parent_pid:
                self.step()
        finally:
            self.call("close", {}, registry.close)
            self.log.close()


def _lease_summary(lease: Any) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"token": lease.token, "entry_id": lease.entry_id, "session": lease.session_id,
            "workspace": lease.workspace}


def worker_main(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    worker = Worker(Path(args.worker), Path(args.log), args.slot, args.seed, args.parent_pid)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        worker.stop_requested = True  # finish the current call, then close the registry cleanly

    def note_resume(signum: int, frame: FrameType | None) -> None:
        worker.resumed = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGCONT, note_resume)
    worker.run(args.sabotage)
    return 0


# =====================================================================================================
# Parent: workers, killer
# =====================================================================================================


@dataclass
class WorkerProcess:
    slot: int
    incarnation: int
    process: subprocess.Popen[bytes]
    log_path: Path
    stderr_path: Path
    stopped_until: float | None = None
    stopped_at_most_until: float | None = None  # a holder: until its session is reaped, at most this

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> bool:
        """It runs and got past opening the registry (its first log line is there)."""
        if self.process.poll() is not None:
            return False
        try:
            return self.log_path.stat().st_size > 0
        except FileNotFoundError:
            return False


class WorkerPool:
    """The round's worker processes. Leaving the ``with`` block kills and waits for every one of them."""

    def __init__(self, round_dir: Path, db: Path, seed: int, round_index: int, sabotage: str | None) -> None:
        self.round_dir = round_dir
        self.db = db
        self.seed = seed
        self.round_index = round_index
        self.sabotage = sabotage
        self.live: dict[int, WorkerProcess] = {}  # by slot
        self.everyone: list[WorkerProcess] = []
        self.incarnations: dict[int, int] = {}
        (round_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in ("NAMEPLATE_DB", "NAMEPLATE_WORKSPACE")}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill_everyone()

    def spawn(self, slot: int) -> WorkerProcess:
        incarnation = self.incarnations.get(slot, 0) + 1
        self.incarnations[slot] = incarnation
        seed = random.Random(f"{self.seed}-{self.round_index}-{slot}-{incarnation}").getrandbits(48)
        log_path = self.round_dir / "logs" / f"slot{slot}-{incarnation:04d}.jsonl"
        stderr_path = self.round_dir / "logs" / f"slot{slot}-{incarnation:04d}.stderr"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.db), "--log", str(log_path),
                   "--slot", str(slot), "--seed", str(seed), "--parent-pid", str(os.getpid())]
        if self.sabotage:
            command += ["--sabotage", self.sabotage]
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       env=self.env)
        worker = WorkerProcess(slot, incarnation, process, log_path, stderr_path)
        self.live[slot] = worker
        self.everyone.append(worker)
        return worker

    def kill(self, worker: WorkerProcess) -> None:
        _signal(worker, signal.SIGKILL)
        worker.process.wait()
        self.live.pop(worker.slot, None)

    def stop(self, worker: WorkerProcess, seconds: float, *, until_reaped: bool) -> None:
        _signal(worker, signal.SIGSTOP)
        now = time.monotonic()
        worker.stopped_until = now + seconds
        worker.stopped_at_most_until = now + max(seconds, STOP_HOLDER_MAX_SECONDS) if until_reaped else None

    def resume_due(self) -> None:
        now = time.monotonic()
        for worker in self.live.values():
            if worker.stopped_until is None or worker.stopped_until > now:
                continue
            if (worker.stopped_at_most_until is not None and now < worker.stopped_at_most_until
                    and live_session_pids(self.db) & {worker.pid}):
                continue  # its session (and leases) still stand: keep it stopped a little longer
            _signal(worker, signal.SIGCONT)
            worker.stopped_until = worker.stopped_at_most_until = None

    def stopped(self) -> list[WorkerProcess]:
        return [w for w in self.live.values() if w.stopped_until is not None]

    def replace_exited(self) -> None:
        """A worker that ended by itself (it crashed: its stderr says why) is replaced, so K stay busy."""
        for worker in list(self.live.values()):
            if worker.process.poll() is not None:
                self.spawn(worker.slot)

    def finish(self, rng: random.Random) -> list[str]:
        """End the round: SIGCONT everyone, then SIGTERM (clean close) or SIGKILL each worker.

        Returns complaints about workers that did not exit after SIGTERM.
        """
        complaints = []
        for worker in self.live.values():
            _signal(worker, signal.SIGCONT)
            worker.stopped_until = worker.stopped_at_most_until = None
        graceful = []
        for worker in list(self.live.values()):
            if rng.random() < 0.5:
                _signal(worker, signal.SIGTERM)
                graceful.append(worker)
            else:
                self.kill(worker)
        deadline = time.monotonic() + GRACEFUL_EXIT_SECONDS
        for worker in graceful:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                complaints.append(f"worker pid {worker.pid} (slot {worker.slot}) did not exit within "
                                  f"{GRACEFUL_EXIT_SECONDS:g} s of SIGTERM; killed")
            self.kill(worker)
        return complaints

    def kill_everyone(self) -> None:
        for worker in self.everyone:
            if worker.process.poll() is None:
                _signal(worker, signal.SIGKILL)
        for worker in self.everyone:
            worker.process.wait()
        self.live.clear()


def _signal(worker: WorkerProcess, signum: int) -> None:
    if worker.process.poll() is None:
        try:
            worker.process.send_signal(signum)
        except ProcessLookupError:
            pass  # it exited between poll() and the signal


def lease_holder_pids(db: Path) -> set[int]:
    """Pids of sessions holding a lease right now (the most interesting processes to SIGSTOP)."""
    return _pids(db, "SELECT s.pid FROM lease AS l JOIN session AS s ON s.id = l.session_id")


def live_session_pids(db: Path) -> set[int]:
    return {int(r[0]) for r in _peek(db, "SELECT pid FROM session WHERE state = 'live'")}


def revision_now(db: Path) -> int | None:
    rows = _peek(db, "SELECT max(rev) FROM event")
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def _pids(db: Path, query: str) -> set[int]:
    return {int(r[0]) for r in _peek(db, query)}


def _peek(db: Path, query: str) -> list[tuple[Any, ...]]:
    """A read-only look at the registry by the killer, with plain sqlite3 (it is no registry client)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # busy or mid-recovery: the answer can wait for the next look


@dataclass
class RoundResult:
    kills: int = 0
    stops: int = 0
    ops: int = 0
    violations: list[str] = field(default_factory=list)


def setup_registry(db: Path) -> None:
    from nameplate import Registry

    with Registry(db, ttl=TTL, lock_delay=LOCK_DELAY, timeout=BUSY_TIMEOUT) as registry:
        for name, parent in WORKSPACE_PARENTS.items():
            registry.create_workspace(name, parent)


def run_round(round_index: int, round_dir: Path, *, workers: int, kills: int, seed: int,
              sabotage: str | None) -> RoundResult:
    from nameplate import Registry

    rng = random.Random(f"{seed}-killer-{round_index}")
    db = round_dir / "registry.db"
    setup_registry(db)
    result = RoundResult()
    started = time.monotonic()
    with WorkerPool(round_dir, db, seed, round_index, sabotage) as pool:
        for slot in range(workers):
            pool.spawn(slot)
        revision_at_last_kill = revision_now(db)
        while result.kills < kills:
            time.sleep(rng.uniform(*KILL_INTERVAL))
            pool.resume_due()
            pool.replace_exited()
            running = [w for w in pool.live.values() if w.stopped_until is None]
            ready = [w for w in running if w.ready()]
            # At least one stop per round (a third of the way in), more at random, one at a time.
            wants_stop = not pool.stopped() and ready and (
                (result.stops == 0 and result.kills >= kills // 3) or rng.random() < STOP_SHARE)
            if wants_stop:
                holders = lease_holder_pids(db)
                candidates = [w for w in ready if w.pid in holders] or ready
                victim = rng.choice(candidates)
                pool.stop(victim, rng.uniform(*STOP_SECONDS), until_reaped=victim.pid in holders)
                result.stops += 1
                continue
            # Kill workers that got going; now and then one still starting up (mid-open) or stopped.
            # Killing whatever is there would mostly hit replacements still importing (a Python start
            # with nameplate's imports costs about 0.3 s of CPU), and nothing would run.
            # No kill while nothing happened since the last one: a worker stopped inside a write
            # transaction holds the write lock, and kills of the workers waiting for it test nothing.
            revision = revision_now(db)
            if revision == revision_at_last_kill:
                continue
            others = [w for w in pool.live.values() if w not in ready and w.process.poll() is None]
            if ready and (not others or rng.random() < 0.85):
                victim = rng.choice(ready)
            elif others and rng.random() < 0.25:
                victim = rng.choice(others)
            else:
                continue
            pool.kill(victim)
            result.kills += 1
            revision_at_last_kill = revision
            pool.spawn(victim.slot)
        while pool.stopped():  # let every stopped worker wake up and act on what it held
            time.sleep(0.02)
            pool.resume_due()
        time.sleep(SETTLE_SECONDS)
        result.violations += [f"check=w {c}" for c in pool.finish(rng)]
        spawned = [(w.pid, w.log_path, w.stderr_path) for w in pool.everyone]
    chaos_seconds = time.monotonic() - started
    crash_state = integrity_problems(db)
    with Registry(db, ttl=TTL, lock_delay=LOCK_DELAY, timeout=BUSY_TIMEOUT) as registry:
        registry.reap()
    checker = Checker(db, spawned)
    checker.violations += [f"check=1 before reap: {p}" for p in crash_state]
    checker.run()
    result.ops = checker.ops
    result.violations += checker.violations
    print(f"round {round_index}: {chaos_seconds:.1f} s, {len(spawned)} worker processes, {result.kills} kills, "
          f"{result.stops} stops, {checker.ops} ops ({checker.failed_ops} raised expected errors), "
          f"{checker.event_count} events, {len(result.violations)} violations", file=sys.stderr)
    return result


# =====================================================================================================
# Checker
# =====================================================================================================


@dataclass(frozen=True, slots=True)
class Event:
    rev: int
    action: str
    workspace: str | None
    kind: str | None
    name: str | None
    entry_id: str | None
    session_id: str | None
    detail: dict[str, Any]

    def where(self) -> str:
        return f"rev {self.rev} {self.action} {self.workspace}/{self.kind}/{self.name} id={self.entry_id}"


@dataclass
class Row:
    """One entry row of the model; ``entry_id`` is None for a tombstone."""

    entry_id: str | None
    metadata: dict[str, Any] | None  # None: not known from the log (written by register or import)


@dataclass(frozen=True, slots=True)
class ModelLease:
    session: str
    token: int
    rev: int


Key = tuple[str, str, str]  # (workspace, kind, name)


def integrity_problems(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    problems = [] if integrity == ["ok"] else [f"integrity_check: {'; '.join(integrity[:5])}"]
    problems += [f"foreign_key_check: {row}" for row in foreign[:20]]
    return problems


class Model:
    """The registry as the event log says it is, replayed one event at a time."""

    def __init__(self, fail: Callable[[str, str], None]) -> None:
        self.fail = fail
        self.parents: dict[str, str | None] = {CORE: None}
        self.rows: dict[Key, Row] = {}
        self.where: dict[str, Key] = {}  # entry id -> its key
        self.incarnation: dict[str, int] = {}  # entry id -> how often it was created
        self.leases: dict[str, ModelLease] = {}  # entry id -> the lease on it
        self.last_token: dict[tuple[str, int], int] = {}  # (entry id, incarnation) -> last token
        self.sessions: dict[str, str] = {}  # session id -> state
        # (viewer, kind, name) -> revisions at which the visible id changed, and the ids then visible
        self.timeline: dict[Key, tuple[list[int], list[str | None]]] = {}
        self.handlers: dict[str, Callable[[Event], set[tuple[str, str]]]] = {
            "create": self.on_create, "register": self.on_register, "update": self.on_update,
            "rename": self.on_rename, "delete": self.on_delete, "hide": self.on_hide, "unhide": self.on_unhide,
            "promote": self.on_promote, "lease.acquire": self.on_acquire, "lease.release": self.on_lease_end,
            "lease.expire": self.on_lease_end, "lease.free": self.on_lease_end, "lease.break": self.on_lease_end,
            "session.open": self.on_session_open, "session.close": self.on_session_end,
            "session.reap": self.on_session_end, "workspace.create": self.on_workspace_create,
            "workspace.delete": self.on_workspace_delete}
        self.ignored = {"kind.define", "kind.delete", "import", "gc"}

    # -- views ---------------------------------------------------------------------------------------

    def visible(self, viewer: str, kind: str, name: str) -> str | None:
        """What a read in ``viewer`` sees: the nearest layer's row decides, a tombstone hides."""
        workspace: str | None = viewer
        while workspace is not None:
            row = self.rows.get((workspace, kind, name))
            if row is not None:
                return row.entry_id
            workspace = self.parents.get(workspace)
        return None

    def ids_between(self, viewer: str, kind: str, name: str, before: int, after: int) -> set[str | None]:
        """Every id visible for the name in ``viewer`` at some revision in ``[before, after]``."""
        revs, values = self.timeline.get((viewer, kind, name), ([], []))
        start = bisect.bisect_right(revs, before)
        seen: set[str | None] = {values[start - 1] if start else None}
        seen.update(values[start:bisect.bisect_right(revs, after)])
        return seen

    def _record_views(self, rev: int, names: set[tuple[str, str]]) -> None:
        for kind, name in names:
            for viewer in self.parents:
                revs, values = self.timeline.setdefault((viewer, kind, name), ([], []))
                now = self.visible(viewer, kind, name)
                if (values[-1] if values else None) != now:
                    revs.append(rev)
                    values.append(now)

    def apply(self, event: Event) -> None:
        if event.action in self.ignored:
            return
        handler = self.handlers.get(event.action)
        if handler is None:
            self.fail("4", f"{event.where()}: an action the checker does not know; teach it what it changes")
            return
        self._record_views(event.rev, handler(event))

    # -- helpers -------------------------------------------------------------------------------------

    def key(self, event: Event) -> Key:
        return (str(event.workspace), str(event.kind), str(event.name))

    def entry_row(self, event: Event, key: Key | None = None) -> Row | None:
        """The row the event names, which must hold the event's entry id (else the log lost a change)."""
        key = key or self.key(event)
        row = self.rows.get(key)
        if row is None or row.entry_id is None:
            self.fail("4", f"{event.where()}: the replayed log has no entry at {'/'.join(key)} "
                           f"({'a tombstone' if row else 'nothing'}) for this event to apply to")
            return None
        if event.entry_id is not None and row.entry_id != event.entry_id:
            self.fail("4", f"{event.where()}: the replayed log has entry {row.entry_id} at {'/'.join(key)}")
            return None
        return row

    def respect_lease(self, event: Event, entry_id: str | None) -> None:
        """Check 7: a content change of a leased entry must come from the holding session."""
        held = self.leases.get(entry_id) if entry_id else None
        if held is not None and held.session != event.session_id:
            self.fail("7", f"{event.where()}: written by session {event.session_id} while session {held.session} "
                           f"holds its lease (token {held.token}, acquired at rev {held.rev}); detail {event.detail}")

    def add_row(self, event: Event, key: Key, metadata: dict[str, Any] | None) -> None:
        entry_id = str(event.entry_id)
        if entry_id in self.where:
            self.fail("2", f"{event.where()}: id already belongs to the entry at {'/'.join(self.where[entry_id])}")
        self.rows[key] = Row(entry_id, metadata)
        self.where[entry_id] = key
        self.incarnation[entry_id] = self.incarnation.get(entry_id, 0) + 1

    def drop_row(self, event: Event, key: Key) -> None:
        row = self.rows.pop(key)
        if row.entry_id is None:
            return
        self.where.pop(row.entry_id, None)
        held = self.leases.pop(row.entry_id, None)
        if held is not None:
            by = "its own holder" if held.session == event.session_id else f"session {event.session_id}"
            self.fail("5", f"{event.where()}: deleted by {by} while session {held.session} held its lease (token "
                           f"{held.token}); the lease row went with the entry and no lease.* event records its end")

    # -- entries -------------------------------------------------------------------------------------

    def on_create(self, event: Event) -> set[tuple[str, str]]:
        key = self.key(event)
        existing = self.rows.get(key)
        if existing is not None and existing.entry_id is not None:
            self.fail("2", f"{event.where()}: created while entry {existing.entry_id} has that name in that layer")
            return {key[1:]}
        imported = event.detail.get("source") == "import"
        if not imported:
            visible = self.visible(key[0], key[1], key[2])
            if visible is not None:
                self.fail("2", f"{event.where()}: resolve created a second id while {visible} was visible")
        self.add_row(event, key, None if imported else dict(event.detail.get("metadata") or {}))
        return {key[1:]}

    def on_register(self, event: Event) -> set[tuple[str, str]]:
        key = self.key(event)
        row = self.rows.get(key)
        if row is None or row.entry_id is None:  # new in this layer (or reviving our tombstone)
            self.add_row(event, key, None)
        elif self.entry_row(event) is not None:
            self.respect_lease(event, row.entry_id)
            row.metadata = None  # a register may change metadata; its event does not say how
        return {key[1:]}

    def on_update(self, event: Event) -> set[tuple[str, str]]:
        row = self.entry_row(event)
        if row is None:
            return set()
        self.respect_lease(event, row.entry_id)
        token = event.detail.get("token")
        if token is not None:  # check 6: a fenced write must carry the token of a lease its session holds
            held = self.leases.get(str(row.entry_id))
            if held is None or held.session != event.session_id or held.token != token:
                now = "nobody" if held is None else f"session {held.session} with token {held.token}"
                self.fail("6", f"{event.where()}: fenced write by session {event.session_id} with token {token} "
                               f"landed while {now} held the lease")
        change = event.detail.get("metadata") or {}
        if row.metadata is not None and change.get("before") != row.metadata:
            self.fail("4", f"{event.where()}: 'before' {change.get('before')} differs from the replayed metadata "
                           f"{row.metadata} (a metadata change is missing from the log)")
        row.metadata = change.get("after")
        return set()

    def on_rename(self, event: Event) -> set[tuple[str, str]]:
        old = (str(event.workspace), str(event.kind), str(event.detail.get("old_name")))
        new = (str(event.workspace), str(event.kind), str(event.detail.get("new_name")))
        row = self.entry_row(event, old)
        if row is None:
            return set()
        self.respect_lease(event, row.entry_id)
        target = self.rows.get(new)
        if target is not None and target.entry_id is not None:
            self.fail("2", f"{event.where()}: renamed onto entry {target.entry_id}")
        del self.rows[old]
        self.rows[new] = row  # a tombstone of the new name in this layer goes (the rename implies it)
        self.where[str(row.entry_id)] = new
        return {old[1:], new[1:]}

    def on_delete(self, event: Event) -> set[tuple[str, str]]:
        key = self.key(event)
        row = self.entry_row(event)
        if row is None:
            return set()
        self.respect_lease(event, row.entry_id)
        self.drop_row(event, key)
        return {key[1:]}

    def on_hide(self, event: Event) -> set[tuple[str, str]]:
        key = self.key(event)
        if key in self.rows:
            self.fail("4", f"{event.where()}: a tombstone over a row the layer already has")
        elif event.entry_id is not None and self.visible(*key) != event.entry_id:
            self.fail("4", f"{event.where()}: hid {event.entry_id} but the replayed view shows {self.visible(*key)}")
        self.rows[key] = Row(None, None)
        return {key[1:]}

    def on_unhide(self, event: Event) -> set[tuple[str, str]]:
        key = self.key(event)
        row = self.rows.get(key)
        if row is None or row.entry_id is not None:
            self.fail("4", f"{event.where()}: no tombstone there in the replayed log")
            return set()
        del self.rows[key]
        return {key[1:]}

    def on_promote(self, event: Event) -> set[tuple[str, str]]:
        source = (str(event.detail.get("from")), str(event.kind), str(event.name))
        target = (str(event.detail.get("to")), str(event.kind), str(event.name))
        row = self.entry_row(event, source)
        if row is None:
            return set()
        self.respect_lease(event, row.entry_id)
        existing = self.rows.get(target)
        if existing is not None and existing.entry_id is not None:
            self.fail("4", f"{event.where()}: promoted over entry {existing.entry_id}, whose deletion is not logged")
            self.drop_row(event, target)
        del self.rows[source]
        self.rows[target] = row  # a tombstone in the parent goes (the promotion implies it)
        self.where[str(row.entry_id)] = target
        return {source[1:]}

    # -- leases and sessions -------------------------------------------------------------------------

    def on_acquire(self, event: Event) -> set[tuple[str, str]]:
        entry_id, session, token = str(event.entry_id), str(event.detail.get("session")), event.detail.get("token")
        if entry_id not in self.where:
            self.fail("5", f"{event.where()}: a lease on an entry the replayed log does not have")
        held = self.leases.get(entry_id)
        if held is not None:
            self.fail("5", f"{event.where()}: acquired by {session} (token {token}) while session {held.session} "
                           f"held it (token {held.token}, since rev {held.rev}) with no release between")
        if self.sessions.get(session) != "live":
            self.fail("5", f"{event.where()}: lease granted to session {session}, which is "
                           f"{self.sessions.get(session, 'unknown')} in the log")
        incarnation = (entry_id, self.incarnation.get(entry_id, 0))
        last = self.last_token.get(incarnation, 0)
        if not isinstance(token, int) or token <= last:
            self.fail("5", f"{event.where()}: token {token} does not exceed the previous token {last}")
        elif token != last + 1:
            self.fail("5", f"{event.where()}: token {token} after {last} (each acquisition adds exactly one)")
        if isinstance(token, int):
            self.last_token[incarnation] = max(last, token)
            self.leases[entry_id] = ModelLease(session, token, event.rev)
        return set()

    def on_lease_end(self, event: Event) -> set[tuple[str, str]]:
        entry_id, session, token = str(event.entry_id), event.detail.get("session"), event.detail.get("token")
        held = self.leases.pop(entry_id, None)
        if held is None:
            self.fail("5", f"{event.where()}: ends a lease (session {session}, token {token}) nobody held")
        elif held.session != session or held.token != token:
            self.fail("5", f"{event.where()}: ends session {session}'s token {token} but the lease was session "
                           f"{held.session}'s token {held.token}")
        return set()

    def on_session_open(self, event: Event) -> set[tuple[str, str]]:
        self.sessions[str(event.detail.get("session"))] = "live"
        return set()

    def on_session_end(self, event: Event) -> set[tuple[str, str]]:
        session = str(event.detail.get("session"))
        if self.sessions.get(session) != "live":
            self.fail("4", f"{event.where()}: ends session {session}, which is "
                           f"{self.sessions.get(session, 'unknown')} in the log")
        self.sessions[session] = "closed" if event.action == "session.close" else str(event.detail.get("state"))
        kept = [entry for entry, lease in self.leases.items() if lease.session == session]
        if kept:
            self.fail("5", f"{event.where()}: session ended while the log still shows it holding {kept}")
        return set()

    # -- workspaces ----------------------------------------------------------------------------------

    def on_workspace_create(self, event: Event) -> set[tuple[str, str]]:
        self.parents[str(event.workspace)] = event.detail.get("parent")
        return {(kind, name) for (_, kind, name) in self.rows}

    def on_workspace_delete(self, event: Event) -> set[tuple[str, str]]:
        workspace = str(event.workspace)
        names = set()
        for key in [k for k in self.rows if k[0] == workspace]:
            if self.rows[key].entry_id is not None:
                self.fail("4", f"{event.where()}: entry {self.rows[key].entry_id} went with the workspace unlogged")
            names.add(key[1:])
            self.drop_row(event, key)
        self.parents.pop(workspace, None)
        return names


EVENT_COLUMNS = frozenset({"workspace", "kind", "name", "entry_id", "session_id"})


class LogIndex:
    """The event log, indexed for the checks of the workers' calls."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.revs = [e.rev for e in events]
        self.introduced = nonces_introduced(events)
        self.acquisitions: dict[tuple[str | None, Any], list[Event]] = {}
        for event in events:
            if event.action == "lease.acquire":
                self.acquisitions.setdefault((event.entry_id, event.detail.get("token")), []).append(event)

    def between(self, before: int, after: int) -> list[Event]:
        """Events committed while a call ran: revisions in (before, after]."""
        return self.events[bisect.bisect_right(self.revs, before):bisect.bisect_right(self.revs, after)]


def _who(call: dict[str, Any]) -> str:
    return f"{call['tag']}#{call['seq']} {call['op']} {json.dumps(call['args'], sort_keys=True)[:300]}"


class Checker:
    """Holds one round's database, event log and worker logs against each other."""

    def __init__(self, db: Path, workers: list[tuple[int, Path, Path]]) -> None:
        self.db = db
        self.workers = workers
        self.violations: list[str] = []
        self.ops = 0
        self.failed_ops = 0
        self.event_count = 0

    def fail(self, check: str, message: str) -> None:
        self.violations.append(f"check={check} {message}")

    def run(self) -> None:
        events = self.read_events()
        self.event_count = len(events)
        model = Model(self.fail)
        for event in events:
            model.apply(event)
        calls = self.read_calls()
        self.check_calls(calls, model, events)
        self.check_final_state(model)

    # -- reading -------------------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db, timeout=BUSY_TIMEOUT)

    def read_events(self) -> list[Event]:
        conn = self.connect()
        try:
            rows = conn.execute("SELECT rev, action, workspace, kind, name, entry_id, session_id, detail FROM event "
                                "ORDER BY rev").fetchall()
        finally:
            conn.close()
        return [Event(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]

    def read_calls(self) -> list[dict[str, Any]]:
        calls = []
        for pid, log_path, stderr_path in self.workers:
            if stderr_path.exists():
                text = stderr_path.read_text(errors="replace")
                if "Traceback" in text:
                    excerpt = text[text.index("Traceback"):][:600].replace("\n", " | ")
                    self.fail("w", f"worker pid {pid} wrote a traceback to stderr ({stderr_path}): {excerpt}")
            if not log_path.exists():
                continue  # killed before it opened its log
            lines = log_path.read_text(encoding="utf-8").split("\n")
            for index, line in enumerate(lines):
                if not line:
                    continue
                try:
                    calls.append(json.loads(line))
                except json.JSONDecodeError:
                    # Only the last line may be cut short (SIGKILL mid-write): that call is unacknowledged.
                    if index != len(lines) - 1:
                        self.fail("w", f"{log_path}:{index + 1}: unreadable log line {line[:100]!r}")
        return calls

    # -- the workers' calls against the log ----------------------------------------------------------

    def check_calls(self, calls: list[dict[str, Any]], model: Model, events: list[Event]) -> None:
        log = LogIndex(events)
        for call in calls:
            self.ops += 1
            if call["ok"]:
                self.check_acknowledged(call, model, log)
            else:
                self.failed_ops += 1
                self.check_failed(call, log)

    def check_failed(self, call: dict[str, Any], log: LogIndex) -> None:
        """A call that raised: the error class must be an expected one, and its write must not land."""
        who = _who(call)
        if not call.get("expected"):
            last_line = (call.get("traceback") or "").strip().splitlines()[-1:] or [""]
            self.fail("w", f"{who}: unexpected {call['error']}: {call['message'][:300]} ({last_line[0]})")
        metadata = call["args"].get("metadata")
        nonce = metadata.get("w") if isinstance(metadata, dict) else None
        # resolve(lock=True) is two steps by design: the entry may be created before the lease is refused.
        if nonce is not None and call["op"] != "resolve_lock" and nonce in log.introduced:
            rev, entry_id = log.introduced[nonce]
            self.fail("6", f"{who}: raised {call['error']}, yet its write landed at rev {rev} on {entry_id}")

    def check_acknowledged(self, call: dict[str, Any], model: Model, log: LogIndex) -> None:
        """A call that returned: what it returned must agree with the log while it ran."""
        op, args, before, after = call["op"], call["args"], call.get("before"), call.get("after")
        if before is None or after is None:
            return  # the revision could not be read around this call: nothing to hold it to
        who, result = _who(call), call.get("result") or {}
        window = log.between(before, after)
        if op in ("resolve", "lookup"):
            returned = result.get("id")
            seen = model.ids_between(args["workspace"], args["kind"], args["name"], before, after)
            if returned not in seen:
                self.fail("3", f"{who}: returned {returned}, but between rev {before} and {after} the log only "
                               f"shows {sorted(map(str, seen))} for that name in that workspace")
        elif op in ("update", "fenced_update"):
            self.check_metadata_write(who, op, args, result, window)
        elif op == "rename" and args["old"] != args["new"]:
            self.expect(who, window, "rename", entry_id=result.get("id"), new_name=args["new"])
        elif op == "delete":
            self.expect(who, window, "delete", entry_id=result.get("id"))
        elif op == "hide":
            self.expect(who, window, "hide", entry_id=result.get("id"), workspace=args["workspace"])
        elif op == "unhide":
            self.expect(who, window, "unhide", workspace=args["workspace"], kind=args["kind"], name=args["name"])
        elif op == "promote":
            self.expect(who, window, "promote", entry_id=result.get("id"))
        elif op == "import" and result.get("applied"):
            self.expect(who, window, "import")
        elif op in ("acquire", "resolve_lock") and result:
            # At or before the call's end (before it, when the worker already held the lease).
            granted = [e for e in log.acquisitions.get((result["entry_id"], result["token"]), [])
                       if e.rev <= after and e.detail.get("session") == result["session"]]
            if not granted:
                self.fail("6", f"{who}: acknowledged lease {result}, but no lease.acquire event grants it")
        elif op == "release" and result.get("gave_up"):
            self.expect(who, window, "lease.release", entry_id=args["entry_id"], token=args["token"])
        elif op == "force_release" and result.get("released"):
            # By entry id: a lease.release event names the entry as it was when the lease was taken.
            named = model.ids_between(args["workspace"], args["kind"], args["name"], before, after) - {None}
            if named & set(result.get("own_leases_held", ())):
                return  # one acquisition of the worker's own re-entered lease: nothing ends in the log
            if not any(e.action in ("lease.break", "lease.release") and e.entry_id in named for e in window):
                self.fail("6", f"{who}: acknowledged, but no lease of {sorted(map(str, named))} ended while it ran")

    def check_metadata_write(self, who: str, op: str, args: dict[str, Any], result: dict[str, Any],
                             window: list[Event]) -> None:
        nonce = args["metadata"]["w"]
        landed = [e for e in window if e.action == "update" and e.entry_id == result.get("id")
                  and ((e.detail.get("metadata") or {}).get("after") or {}).get("w") == nonce]
        if not landed:
            self.fail("6", f"{who}: acknowledged (id {result.get('id')}), but no update event while it ran wrote it")
            return
        event = landed[0]
        if op == "fenced_update" and (event.detail.get("token") != args["token"]
                                      or event.session_id != args["session"]
                                      or event.detail["metadata"]["after"] != args["metadata"]):
            self.fail("6", f"{who}: landed as {event.where()} with token {event.detail.get('token')}, "
                           f"session {event.session_id}, value {event.detail['metadata']['after']}")

    def expect(self, who: str, window: list[Event], action: str | tuple[str, ...], **fields: Any) -> None:
        """An acknowledged write must be in the log, committed while the call ran: an event of ``action``
        whose ``fields`` (event attributes, else detail keys) have these values."""
        actions_wanted = (action,) if isinstance(action, str) else action

        def matches(event: Event) -> bool:
            return event.action in actions_wanted and all(
                (getattr(event, key) if key in EVENT_COLUMNS else event.detail.get(key)) == value
                for key, value in fields.items())

        if not any(matches(e) for e in window):
            actions = ", ".join(f"{e.rev}:{e.action}" for e in window[:12])
            self.fail("6", f"{who}: acknowledged, but no matching event while it ran (saw: {actions or 'none'})")

    # -- the final tables against the replayed log ---------------------------------------------------

    def check_final_state(self, model: Model) -> None:
        for problem in integrity_problems(self.db):
            self.fail("1", f"after reap: {problem}")
        conn = self.connect()
        try:
            duplicates = conn.execute("SELECT workspace_id, kind_id, name, count(*) FROM entry "
                                      "GROUP BY workspace_id, kind_id, name HAVING count(*) > 1").fetchall()
            entries = conn.execute(
                "SELECT w.name, k.name, e.name, e.hidden, e.id, e.metadata FROM entry AS e "
                "JOIN workspace AS w ON w.id = e.workspace_id JOIN kind AS k ON k.id = e.kind_id").fetchall()
            leases = conn.execute("SELECT e.id, l.session_id, l.token, s.state, s.pid FROM lease AS l "
                                  "JOIN entry AS e ON e.pk = l.entry_pk "
                                  "LEFT JOIN session AS s ON s.id = l.session_id").fetchall()
            sessions = conn.execute("SELECT id, state, pid FROM session").fetchall()
            ephemeral = conn.execute(
                "SELECT e.id, e.name, e.owner_session_id, s.state FROM entry AS e "
                "LEFT JOIN session AS s ON s.id = e.owner_session_id WHERE e.ephemeral = 1").fetchall()
        finally:
            conn.close()
        for row in duplicates:
            self.fail("2", f"{row[3]} rows for workspace id {row[0]}, kind id {row[1]}, name {row[2]!r}")
        self.compare_entries(model, entries)
        actual_leases = {r[0]: (r[1], int(r[2])) for r in leases}
        expected_leases = {entry: (lease.session, lease.token) for entry, lease in model.leases.items()}
        for entry in sorted(set(actual_leases) | set(expected_leases)):
            if actual_leases.get(entry) != expected_leases.get(entry):
                self.fail("4", f"lease on {entry}: the table has {actual_leases.get(entry)}, the log implies "
                               f"{expected_leases.get(entry)}")
        actual_sessions = {r[0]: r[1] for r in sessions}
        for session in sorted(set(actual_sessions) | set(model.sessions)):
            if actual_sessions.get(session) != model.sessions.get(session):
                self.fail("4", f"session {session}: the table says {actual_sessions.get(session)}, the log implies "
                               f"{model.sessions.get(session)}")
        worker_pids = {pid for pid, _, _ in self.workers}
        for session, state, pid in sessions:
            if state == "live" and (pid in worker_pids or not _process_exists(int(pid))):
                self.fail("8", f"session {session} of dead pid {pid} is still live after reap()")
        for entry, session, token, state, pid in leases:
            if state != "live" or pid in worker_pids:
                self.fail("8", f"lease on {entry} (token {token}) still belongs to session {session} of pid {pid} "
                               f"({state}) after reap()")
        for entry, name, owner, state in ephemeral:
            if state != "live":
                self.fail("8", f"ephemeral entry {name!r} ({entry}) outlived its session {owner} ({state})")

    def compare_entries(self, model: Model, entries: list[tuple[Any, ...]]) -> None:
        actual: dict[Key, tuple[str | None, dict[str, Any]]] = {
            (r[0], r[1], r[2]): (None if r[3] else r[4], json.loads(r[5])) for r in entries}
        for key in sorted(set(actual) | set(model.rows)):
            have, implied = actual.get(key), model.rows.get(key)
            where = "/".join(key)
            if have is None and implied is not None:
                self.fail("4", f"{where}: the log implies {implied.entry_id or 'a tombstone'}, the table has no row")
                continue
            if have is not None and implied is None:
                self.fail("4", f"{where}: the table has {have[0] or 'a tombstone'}, the log implies no row")
                continue
            assert have is not None and implied is not None
            if have[0] != implied.entry_id:
                self.fail("4", f"{where}: the table has {have[0] or 'a tombstone'}, the log implies "
                               f"{implied.entry_id or 'a tombstone'}")
            elif implied.entry_id is not None and implied.metadata is not None and have[1] != implied.metadata:
                self.fail("4", f"{where}: metadata {have[1]} in the table, {implied.metadata} by the log")


def nonces_introduced(events: list[Event]) -> dict[str, tuple[int, str | None]]:
    """Each metadata nonce (``"w"``) some event wrote, with the revision and entry that first got it."""
    found: dict[str, tuple[int, str | None]] = {}
    for event in events:
        if event.action == "update":
            change = event.detail.get("metadata") or {}
            written = (change.get("after") or {}).get("w")
            if written is not None and written != (change.get("before") or {}).get("w"):
                found.setdefault(written, (event.rev, event.entry_id))
        elif event.action == "create":
            written = (event.detail.get("metadata") or {}).get("w")
            if written is not None:
                found.setdefault(written, (event.rev, event.entry_id))
    return found


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# =====================================================================================================
# Command line
# =====================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each on a fresh registry file")
    parser.add_argument("--workers", type=int, default=3, help="worker processes kept busy per round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workers' operations and of the killer")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per round")
    parser.add_argument("--db", type=Path, default=None, help="directory for the rounds' files (default: a temp dir)")
    parser.add_argument("--sabotage", choices=SABOTAGE_MODES, default=None,
                        help="skip the fence check or the lease guard in the workers: the run must fail")
    parser.add_argument("--keep", action="store_true", help="keep every round's files (else only failing rounds')")
    # The worker side of this script (internal).
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and (args.rounds < 1 or args.workers < 1 or args.kills < 0):
        parser.error("--rounds and --workers must be at least 1, --kills at least 0")
    return args


class Interrupted(Exception):
    """SIGTERM or SIGHUP to the chaos parent: unwind, so every worker is killed on the way out."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def rounds_directory(args: argparse.Namespace) -> Iterator[tuple[int, Path]]:
    base = args.db
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    for round_index in range(1, args.rounds + 1):
        if base is None:
            yield round_index, Path(tempfile.mkdtemp(prefix=f"nameplate-chaos-r{round_index}-"))
        else:
            round_dir = base / f"round-{round_index:03d}"
            if round_dir.exists():
                shutil.rmtree(round_dir)
            round_dir.mkdir()
            yield round_index, round_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    total = RoundResult()
    rounds_done = 0
    try:
        for round_index, round_dir in rounds_directory(args):
            result = run_round(round_index, round_dir, workers=args.workers, kills=args.kills, seed=args.seed,
                               sabotage=args.sabotage)
            rounds_done += 1
            total.kills += result.kills
            total.ops += result.ops
            for violation in result.violations:
                total.violations.append(violation)
                print(f"VIOLATION round={round_index} {violation}", flush=True)
            if args.keep or result.violations:
                print(f"round {round_index}: files kept in {round_dir}", file=sys.stderr)
            else:
                shutil.rmtree(round_dir, ignore_errors=True)
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"interrupted ({str(stop) or 'Ctrl-C'}) after {rounds_done} rounds; every worker was killed",
              file=sys.stderr)
        print(f"rounds={rounds_done} kills={total.kills} ops={total.ops} violations={len(total.violations)}")
        return 130
    print(f"rounds={rounds_done} kills={total.kills} ops={total.ops} violations={len(total.violations)}")
    return 1 if total.violations else 0


if __name__ == "__main__":
    sys.exit(main())
