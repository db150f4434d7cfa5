"""Is a session's owner still there? Process identity, boot identity and clocks.

A session on this host is judged by its process: the pid must exist, not be a zombie, and have the
same start time (counted from boot, so a wall-clock step does not change it) — a pid reused by an
unrelated process fails that test. A live process that stopped beating expires after its ttl, measured
on CLOCK_MONOTONIC (``time.monotonic()``): system-wide, untouched by NTP steps, and paused while a VM
is suspended, so a resumed VM does not steal live leases. Monotonic readings only compare within one
boot, hence the boot id next to them. Sessions of other hosts fall back to the wall clock.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HOSTNAME = socket.gethostname()
#: Start times are kept in clock ticks (0.01 s); a little more absorbs the float round trip.
START_TOLERANCE = 0.05


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # Not Linux: the boot time is the next best identity of this boot (coarse, second resolution).
        return f"boot-{int(psutil.boot_time())}"


BOOT_ID = _read_boot_id()


def _read_pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"; containers have their own
    except OSError:
        return ""


#: Where a pid means this process table: this boot and this pid namespace. A session on a database
#: shared by hosts records it in ``boot_id``; a judge with another identity cannot read its pid.
PROCESS_TABLE = f"{BOOT_ID}/{_read_pid_namespace()}"


def boot_identity(one_host: bool) -> str:
    """What a new session records as its ``boot_id``: the boot id on a one-host database (as ever),
    the boot id and pid namespace on one shared by hosts (see :func:`verdict`)."""
    return BOOT_ID if one_host else PROCESS_TABLE


def process_start(pid: int) -> float | None:
    """Seconds from boot to the start of ``pid``; ``None`` if it is gone or a zombie.

    A killed child stays a zombie until its parent waits for it: it is dead for our purposes.
    """
    try:
        # psutil gives wall-clock create times: the kernel's tick count since boot plus the boot
        # time from /proc/stat, which moves when the wall clock is stepped. Subtracting a boot time
        # read separately is exact unless a step lands between the reads, and then a live owner
        # would look like a reused pid and lose its leases: bracket the reads and retry on a step.
        for _ in range(3):
            boot = psutil.boot_time()
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            created = process.create_time()
            if psutil.boot_time() == boot:
                break
        return float(created - boot)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return float("nan")  # exists but unreadable: treated as alive (see verdict)


@dataclass(frozen=True, slots=True)
class Owner:
    """The columns of a session row that liveness is judged on."""

    pid: int
    hostname: str
    boot_id: str
    process_start: float
    ttl: float
    beat_at: float
    beat_mono: float

    @classmethod
    def from_row(cls, row: Sequence[Any], start: int) -> Owner:
        """Read the owner from ``row[start:start + 7]``, selected in the order of :data:`OWNER_COLUMNS`."""
        pid, hostname, boot_id, process_start, ttl, beat_at, beat_mono = row[start:start + 7]
        return cls(pid=int(pid), hostname=hostname, boot_id=boot_id, process_start=float(process_start),
                   ttl=float(ttl), beat_at=float(beat_at), beat_mono=float(beat_mono))


#: The session columns :meth:`Owner.from_row` expects, in order.
OWNER_COLUMNS = ("pid", "hostname", "boot_id", "process_start", "ttl", "beat_at", "beat_mono")


def owner_columns(alias: str = "") -> str:
    """:data:`OWNER_COLUMNS` for a SELECT list, e.g. ``s.pid, s.hostname, ...`` for ``alias="s"``."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + column for column in OWNER_COLUMNS)


def verdict(owner: Owner, *, now_wall: float | None = None, now_mono: float | None = None,
            one_host: bool = True) -> str | None:
    """``None`` if the session may live on, else ``"dead"`` (owner proven gone) or ``"expired"`` (ttl).

    ``one_host=False`` (a database shared by hosts, ``now_wall`` from its server's clock): a session is
    judged by its pid only when its boot id and pid namespace are the judge's; any other is judged by
    ttl on ``now_wall`` alone. Never by hostname: two hosts may share one, and must not declare each
    other's live sessions dead.
    """
    now_wall = time.time() if now_wall is None else now_wall
    now_mono = time.monotonic() if now_mono is None else now_mono
    if not one_host:
        if owner.boot_id != PROCESS_TABLE:
            return "expired" if now_wall - owner.beat_at > owner.ttl else None
    elif owner.hostname != HOSTNAME:
        return "expired" if now_wall - owner.beat_at > owner.ttl else None
    elif owner.boot_id != BOOT_ID:
        return "dead"  # this host rebooted since the session began
    start = process_start(owner.pid)
    if start is None:
        return "dead"
    if start == start and abs(start - owner.process_start) > START_TOLERANCE:  # NaN: access denied
        return "dead"  # the pid now belongs to another process
    if now_mono - owner.beat_mono > owner.ttl:
        return "expired"
    return None


def delay_active(until_mono: float, boot_id: str, until_wall: float, now_wall: float | None = None) -> float:
    """Seconds left in a lock-delay (0 if over), on the monotonic clock when it was set in this boot,
    else on the wall clock ``now_wall`` (the database's :meth:`~nameplate.backends.base.Backend.clock`)."""
    if boot_id == BOOT_ID:
        return max(0.0, until_mono - time.monotonic())
    return max(0.0, until_wall - (time.time() if now_wall is None else now_wall))
