"""Run a VMM under ptrace and report the syscalls a KVM decoder needs (see session.py)."""

from conformance.tracer.errors import SpawnError, TracerError
from conformance.tracer.session import (
    SyscallStop,
    TaskKind,
    TraceHandler,
    TraceResult,
    TraceSession,
)

__all__ = [
    "SpawnError",
    "SyscallStop",
    "TaskKind",
    "TraceHandler",
    "TraceResult",
    "TraceSession",
    "TracerError",
]
