"""``nameplate lock NAME -- COMMAND...``: run a command while holding an entry's fenced lease.

Like ``flock(1)`` and ``etcdctl lock``, for lab scripts and cron jobs:

- the command gets the lease's fencing token and the entry's id in ``NAMEPLATE_FENCING_TOKEN`` and
  ``NAMEPLATE_ENTRY_ID``, to stamp on what it writes elsewhere;
- the lease is released when the command exits, and its exit code is passed through (a command
  killed by signal N gives 128 + N, as in the shells);
- when the lease is lost while the command runs (the heartbeat found it released by force, or the
  session could not be renewed for its ttl) the command gets SIGTERM, then SIGKILL after the grace
  period, and ``nameplate lock`` exits 8 (:class:`CommandLeaseLostError`);
- SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to ``nameplate lock`` are passed on to the command. A
  Ctrl-C typed at the terminal already reaches the command (same process group), so a signal that
  the kernel generated for the terminal is not sent a second time;
- on Linux the command is started with ``PR_SET_PDEATHSIG``: if ``nameplate lock`` itself is killed
  (``kill -9``), its lease is free at once for the next holder (a dead owner is reaped on the spot),
  so the command must not run on unguarded; the kernel kills it.

How the signals are taken: the heartbeat thread is started with these signals blocked, and the main
thread blocks them while the command runs and takes them with ``sigtimedwait``, which also tells
(``si_code``) a terminal's signal from a ``kill``. Python-level handlers catch any that still reach
an unblocked thread, so each signal is passed on once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ._lease import Lease
from .errors import CommandLeaseLostError, CommandNotRunnableError, EntryNotFoundError, NameplateError
from .registry import Registry

ENV_TOKEN = "NAMEPLATE_FENCING_TOKEN"
ENV_ENTRY_ID = "NAMEPLATE_ENTRY_ID"

#: Signals passed on to the command.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_WATCHED = {*FORWARDED, signal.SIGCHLD}

#: ``si_code`` of a signal the kernel sent, e.g. the terminal's SIGINT on Ctrl-C (Linux's SI_KERNEL).
_SI_KERNEL = 0x80

#: How often the wait loop looks at the lease's ``lost`` flag when no signal arrives (seconds).
_POLL = 0.1

# Runs between fork and the command's exec, in a fresh interpreter (not a preexec_fn: forking a
# process that has a heartbeat thread and running Python in the child before exec can deadlock).
# PR_SET_PDEATHSIG survives exec; the getppid() check closes the race of a parent that died before
# the prctl. Python ignores SIGPIPE at startup and exec keeps ignored signals ignored: undo that so
# the command sees the default disposition, as it would from a shell.
_LAUNCHER = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("nameplate: error: cannot tie the command to nameplate lock (prctl failed)")
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as error:
    print(f"nameplate: error: cannot run {sys.argv[2]!r}: {error.strerror}", file=sys.stderr)
    sys.exit(127 if isinstance(error, FileNotFoundError) else 126)
"""


def check_runnable(command: Sequence[str]) -> None:
    """Refuse a command that cannot start, before any lease is taken."""
    program = command[0]
    if os.sep in program:
        if not os.path.exists(program):
            raise CommandNotRunnableError(f"cannot run {program!r}: no such file", command=program)
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise CommandNotRunnableError(f"cannot run {program!r}: not an executable file", command=program,
                                          exit_code=126)
    elif shutil.which(program) is None:
        raise CommandNotRunnableError(f"cannot run {program!r}: not found on PATH", command=program)


def open_session(registry: Registry, label: str) -> None:
    """Open the session with the forwarded signals blocked, so its heartbeat thread never takes them
    (``nameplate lock``, ``campaign`` and ``semaphore`` open it so before taking their lease)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        registry.session(label=label, status="running")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def take_lease(registry: Registry, name: str, kind: str | None, workspace: str | None, wait: float | None,
               label: str) -> Lease:
    """Open the session (its heartbeat thread never takes the forwarded signals), then the lease.

    With a kind, a missing entry is created and leased in one transaction (as ``flock`` creates its
    file); without one, the name must exist.
    """
    open_session(registry, label)
    if kind is not None:
        registry.resolve(name, kind, workspace=workspace, lock=True, wait=wait)
        lease = registry.lease(name, kind, workspace=workspace)
        assert lease is not None, "resolve(lock=True) returned without the lease"
        return lease
    if registry.lookup(name, workspace=workspace) is None:
        where = registry.current_workspace if workspace is None else workspace
        raise EntryNotFoundError(f"no entry {name!r} in workspace {where!r}; pass --kind KIND to create it and "
                                 "lock it", name=name, workspace=where)
    return registry.acquire(name, None, wait=wait, workspace=workspace)


def run_command(lease: Lease, command: Sequence[str], *, grace: float,
                extra_env: dict[str, str] | None = None) -> int:
    """Run ``command`` while ``lease`` is held; return its exit code, or raise
    :class:`CommandLeaseLostError` after stopping it if the lease is lost first."""
    env = {**os.environ, ENV_TOKEN: str(lease.token), ENV_ENTRY_ID: lease.entry_id, **(extra_env or {})}
    arrived: list[int] = []  # signals that reached a thread without the mask, by Python's handlers
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in FORWARDED}
    argv = ([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *command]
            if sys.platform.startswith("linux") else list(command))
    try:
        child = subprocess.Popen(argv, env=env)  # with our signal mask unblocked: the command inherits it
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            return _supervise(child, lease, arrived, grace)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(child: subprocess.Popen[Any], lease: Lease, arrived: list[int], grace: float) -> int:
    own_group = os.getpgrp()
    while True:
        code = child.poll()
        if code is not None:
            if lease.lost or not _still_held(lease):
                raise CommandLeaseLostError(
                    f"the lease on {lease.kind} {lease.name!r} (token {lease.token}) was lost before the command "
                    f"finished ({lease.lost_reason}); it exited {_shell_code(code)}, but not under the lease",
                    name=lease.name, kind=lease.kind, token=lease.token, command_exit=_shell_code(code))
            return _shell_code(code)
        if lease.lost:
            stopped_by = _stop(child, grace)
            raise CommandLeaseLostError(
                f"the lease on {lease.kind} {lease.name!r} (token {lease.token}) was lost while the command ran "
                f"({lease.lost_reason}); the command was stopped with {stopped_by}", name=lease.name,
                kind=lease.kind, token=lease.token, reason=lease.lost_reason)
        info = signal.sigtimedwait(_WATCHED, _POLL)
        if info is not None and info.si_signo != signal.SIGCHLD:
            from_terminal = info.si_code == _SI_KERNEL and _process_group(child.pid) == own_group
            if not from_terminal:
                _send(child, info.si_signo)
        while arrived:
            _send(child, arrived.pop(0))


def _still_held(lease: Lease) -> bool:
    """Ask the database once more: the heartbeat looks only every ttl/3 seconds."""
    try:
        lease.check()
    except NameplateError:  # LeaseLost, or a database error that leaves us unable to vouch for the lease
        return False
    return True


def _stop(child: subprocess.Popen[Any], grace: float) -> str:
    _send(child, signal.SIGTERM)
    try:
        child.wait(timeout=grace)
        return "SIGTERM"
    except subprocess.TimeoutExpired:
        _send(child, signal.SIGKILL)
        child.wait()
        return f"SIGKILL ({grace:g} s after SIGTERM)"


def _send(child: subprocess.Popen[Any], signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:  # it exited meanwhile: the loop reads its code next
        pass


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _shell_code(returncode: int) -> int:
    """A command killed by signal N reports 128 + N, as the shells do."""
    return 128 - returncode if returncode < 0 else returncode
