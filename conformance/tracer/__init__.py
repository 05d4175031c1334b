"""Run a VMM under ptrace and turn its KVM calls into decoded events.

`trace()` / `attach()` (tracing.py) are the entry points; session.py is the process control
they drive, recorder.py the handler that decodes each stop into events.
"""

from conformance.tracer.errors import SpawnError, TracerError
from conformance.tracer.session import TraceSession
from conformance.tracer.stops import SyscallStop, TaskKind, TraceHandler, TraceResult
from conformance.tracer.tracing import TraceOutcome, attach, trace

__all__ = [
    "SpawnError",
    "SyscallStop",
    "TaskKind",
    "TraceHandler",
    "TraceOutcome",
    "TraceResult",
    "TraceSession",
    "TracerError",
    "attach",
    "trace",
]
