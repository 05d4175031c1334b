"""Start a program stopped, ready for the tracer to seize it, then let it exec.

The child side of TraceSession.spawn: everything between fork() and execve(). It runs in the
forked copy of the tracer, so it calls only what is already loaded (no imports, no
subprocesses) and never returns into the parent's code.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
from collections.abc import Mapping, Sequence

from conformance.tracer import ptrace_backend as backend
from conformance.tracer import seccomp, tracee_memory
from conformance.tracer.errors import SpawnError, TracerError

_PAGE = 4096


def resolve_executable(argv: Sequence[str], search_path: str, cwd: str | None) -> str:
    """The file to exec for argv[0], found the way a shell would; a clear error if none."""
    if not argv:
        raise SpawnError("nothing to run: empty argv")
    command = argv[0]
    if "/" in command:
        candidate = command if cwd is None else os.path.join(cwd, command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return command
        raise SpawnError(f"{command}: not found or not executable")
    found = shutil.which(command, path=search_path)
    if found is None:
        raise SpawnError(f"{command}: command not found in PATH")
    return found


def privileged(executable: str) -> str | None:
    """What an exec of `executable` would grant ("setuid", "setgid", "file-capability"), or
    None: what NO_NEW_PRIVS takes away."""
    try:
        mode = os.stat(executable).st_mode
    except OSError:
        return None  # exec will say why
    if mode & stat.S_ISUID:
        return "setuid"
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:  # without group x it is a locking mark
        return "setgid"
    try:
        os.getxattr(executable, "security.capability")
    except OSError:
        return None
    return "file-capability"


_PATH_MAX = 4096
_AT_FDCWD = -100


def exec_target(tid: int, at: bool, args: Sequence[int]) -> str | None:
    """The file an execve (or, `at`, execveat) of stopped task `tid` would run, as an absolute
    path (relative ones resolved from its cwd or dirfd), or None when it cannot be read (the
    exec then fails by itself)."""
    address = args[1] if at else args[0]
    name = b""
    try:
        while b"\0" not in name and len(name) < _PATH_MAX:
            start = address + len(name)
            name += tracee_memory.read_memory(tid, start, _PAGE - start % _PAGE)
    except TracerError:
        return None
    path = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if path.startswith("/"):
        return path
    dirfd = ctypes.c_int(args[0]).value if at else _AT_FDCWD
    base = f"/proc/{tid}/cwd" if dirfd == _AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
    try:
        directory = os.readlink(base)
    except OSError:
        return None
    return os.path.join(directory, path) if path else directory  # "": AT_EMPTY_PATH


def exec_child(
    *,
    parent: int,
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    stdio: tuple[int | None, int | None, int | None],
    seccomp_program: bytes | None,
    no_new_privs: bool,
    error_pipe: int,
    start_signals: Mapping[int, signal.Handlers],
) -> None:
    """Runs in the forked child: stop for the tracer, install the filter, exec; never returns.

    `start_signals` are given these dispositions and unblocked first. An exec failure is
    reported as its errno on `error_pipe` (close-on-exec, so a successful
    exec closes it empty) and the child exits 127 as a shell does for a command it cannot run.
    """
    try:
        # The tracer's own handlers, copied by fork(), give way to what the program starts with
        # (as exec would), then the signals are unblocked (the tracer blocked them for fork()).
        for signum, disposition in start_signals.items():
            signal.signal(signum, disposition)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, start_signals)
        backend.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(126)  # the tracer died before prctl() took effect
        for target, source in enumerate(stdio):
            if source is not None:
                os.dup2(source, target)
        if cwd is not None:
            os.chdir(cwd)
        # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSTOP)  # wait here until the tracer has seized us
        if seccomp_program is not None:
            seccomp.install_filter(seccomp_program, no_new_privs=no_new_privs)
        os.execve(executable, list(argv), dict(env))
    except OSError as error:
        os.write(error_pipe, str(error.errno or 0).encode())
    finally:
        os._exit(127)  # whatever happened, never return into the parent's code
