"""What the tracer saw, as plain data: one dataclass per kind of call. No I/O here.

Values are raw (fd numbers, host addresses, thread ids, flag bits); turning them into roles,
`regionN+offset` names and symbolic flags is normalization's job, so that the raw stream stays a
faithful record of what the kernel was asked and answered.

Decoded ioctl arguments are `Fields`: the struct's C field names mapped to ints, nested `Fields`
for nested structs/unions, and lists for arrays (variable-length arrays cut to their real count).
`inputs` is what the kernel read at syscall entry, `outputs` what it wrote by syscall exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

# What a trace records of KVM_RUN: every exit decoded ("full"), each vCPU's exit counters from
# KVM's statistics ("summary"), or nothing ("off"); every other call is recorded in all three.
KvmRunMode = Literal["full", "summary", "off"]

FieldValue: TypeAlias = "int | bytes | list[FieldValue] | dict[str, FieldValue]"
Fields: TypeAlias = dict[str, FieldValue]


@dataclass(frozen=True, slots=True)
class Call:
    """A traced system call: who made it and what it returned."""

    seq: int  # position in the whole trace, across threads
    tid: int
    pid: int  # thread-group id: the process the thread belongs to
    ret: int  # the syscall's return value (meaningless when errno is set)
    errno: int | None  # set when the call failed


@dataclass(frozen=True, slots=True)
class OpenKvm(Call):
    """open/openat of a KVM device node (/dev/kvm)."""

    path: str
    flags: int
    fd_role: str | None = None  # role of the fd it returned ("kvm", "kvm2"...); None if failed
    syscall: str = "open"  # "open", "openat" or "openat2", as the program called it
    dirfd: int | None = None  # openat/openat2's directory fd (AT_FDCWD: -100); None for open


@dataclass(frozen=True, slots=True)
class GuestMemoryDigest:
    """The guest memory a VM ran first: a hash of its non-zero pages, read at its first KVM_RUN.

    sha256 over each non-zero 4 KiB guest page in guest-physical order (address space, gpa),
    each page preceded by its address: the same guest program, loaded at the same addresses,
    hashes the same whichever VMM loaded it and however the VMM's host memory is laid out.
    """

    vm_role: str
    pages: int  # non-zero pages hashed
    sha256: str


@dataclass(frozen=True, slots=True)
class Ioctl(Call):
    """An ioctl on a KVM fd (system, VM, vCPU, device, stats...)."""

    fd: int
    fd_role: str  # role of `fd` when the call was made: "kvm", "vm", "vcpu0", "device0", ...
    request: int
    name: str | None  # None: a request the ABI table does not know (recorded raw, flagged)
    arg: int  # the raw third argument: an integer or a pointer
    inputs: Fields | None = None  # decoded at entry (None: no struct read)
    outputs: Fields | None = None  # decoded at exit, failures included
    new_fd_role: str | None = None  # role of the fd this call created (CREATE_VM, CREATE_VCPU...)
    run_exit: Fields | None = None  # KVM_RUN: the exit reason and its payload from kvm_run
    run_entry: Fields | None = None  # KVM_RUN: what the VMM answered a prior IO-in/MMIO-read with
    # KVM_RUN: this call and the identical ones right after it on its thread, `repeat` in all
    # (seq numbers seq .. seq + repeat - 1); the tracer merges them where it sees them whole.
    repeat: int = 1
    # The VM's first KVM_RUN: the guest memory it starts from (None if unreadable, or later).
    guest_memory: GuestMemoryDigest | None = None
    # A pointer argument the tracer could not read whole (NULL, unmapped, PROT_NONE, a struct
    # running into such a page): how many of its bytes could be read, at entry or exit, the
    # first time it fell short; `inputs`/`outputs` hold the fields within them. None: read whole.
    readable: int | None = None


@dataclass(frozen=True, slots=True)
class Mmap(Call):
    """mmap; `fd_role` names the KVM fd it maps (a vCPU's kvm_run), None for anonymous memory."""

    addr: int
    length: int
    prot: int
    flags: int
    fd: int
    fd_role: str | None
    offset: int


@dataclass(frozen=True, slots=True)
class Munmap(Call):
    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class Mremap(Call):
    old_addr: int
    old_length: int
    new_length: int
    flags: int
    new_addr: int


@dataclass(frozen=True, slots=True)
class Mprotect(Call):
    addr: int
    length: int
    prot: int


@dataclass(frozen=True, slots=True)
class Madvise(Call):
    addr: int
    length: int
    advice: int


@dataclass(frozen=True, slots=True)
class DupFd(Call):
    """dup/dup2/dup3/fcntl(F_DUPFD*) of a KVM fd: `ret` now names the same object."""

    syscall: str
    old_fd: int
    fd_role: str


@dataclass(frozen=True, slots=True)
class CloseFd(Call):
    fd: int
    fd_role: str


@dataclass(frozen=True, slots=True)
class EventFd(Call):
    """eventfd2: the fds IOEVENTFD/IRQFD later hand to KVM."""

    initval: int
    flags: int


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A new thread or process appeared under the tracer."""

    seq: int
    tid: int
    pid: int
    parent_tid: int
    kind: str  # "thread" or "process"


@dataclass(frozen=True, slots=True)
class TaskExited:
    seq: int
    tid: int
    pid: int
    status: int  # as os.waitstatus_to_exitcode: exit code, or -signal


@dataclass(frozen=True, slots=True)
class KvmRunSummary:
    """Per-vCPU exit counters from KVM's binary stats (`--kvm-run=summary`)."""

    seq: int
    tid: int
    pid: int
    vcpu_role: str
    counters: dict[str, int] = field(default_factory=dict)


Event: TypeAlias = (
    OpenKvm
    | Ioctl
    | Mmap
    | Munmap
    | Mremap
    | Mprotect
    | Madvise
    | DupFd
    | CloseFd
    | EventFd
    | TaskStarted
    | TaskExited
    | KvmRunSummary
)

# The name an event goes by in a trace (raw YAML's `call:`, `trace -e trace=`): the system call
# as the program made it where one event covers several, else the event's own name.
_NAMES: dict[type, str] = {
    CloseFd: "close",
    EventFd: "eventfd2",  # eventfd and eventfd2 alike: the kernel's eventfd() is eventfd2
    TaskStarted: "task_started",
    TaskExited: "task_exited",
    KvmRunSummary: "kvm_run_summary",
}


def call_name(event: Event) -> str:
    if isinstance(event, OpenKvm | DupFd):
        return event.syscall
    return _NAMES.get(type(event)) or type(event).__name__.lower()
