"""Lifecycle rules: a vCPU runs only once it is set up, and only on state KVM accepted."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from conformance.lint.calls import calls_in_order, is_vcpu_fd, refused
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import address, failed, fd, integer, request
from conformance.model.document import Located, TraceDocument

# Calls that set state a later KVM_RUN depends on. If KVM refuses one, the guest runs on the
# state from before it: for a VM-wide call any vCPU of the VM is affected, for a vCPU call that
# vCPU. Probing calls (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP, the GET_* size probes answered
# E2BIG) are not here: failing is a normal answer to them.
VM_STATE_CALLS = frozenset(
    {
        "KVM_SET_USER_MEMORY_REGION",
        "KVM_SET_TSS_ADDR",
        "KVM_SET_IDENTITY_MAP_ADDR",
        "KVM_CREATE_IRQCHIP",
        "KVM_SET_IRQCHIP",
        "KVM_CREATE_PIT2",
        "KVM_SET_PIT2",
        "KVM_SET_GSI_ROUTING",
        "KVM_IRQFD",
        "KVM_IOEVENTFD",
        "KVM_SET_CLOCK",
    }
)
VCPU_STATE_CALLS = frozenset(
    {
        "KVM_SET_REGS",
        "KVM_SET_SREGS",
        "KVM_SET_SREGS2",
        "KVM_SET_CPUID2",
        "KVM_SET_MSRS",
        "KVM_SET_FPU",
        "KVM_SET_XSAVE",
        "KVM_SET_XCRS",
        "KVM_SET_LAPIC",
        "KVM_SET_MP_STATE",
        "KVM_SET_VCPU_EVENTS",
        "KVM_SET_DEBUGREGS",
        "KVM_SET_GUEST_DEBUG",
    }
)
REGISTER_CALLS = frozenset({"KVM_SET_REGS", "KVM_SET_SREGS", "KVM_SET_SREGS2"})
_KVM_RUN_MAPPING = "kvm_run:"  # how normalization names a vCPU fd's mapping at offset 0


def _carried_on_after_failure(document: TraceDocument) -> Iterator[Hit]:
    for role, calls in calls_in_order(document):
        for position, located in enumerate(calls):
            name = request(located.entry)
            if name not in VM_STATE_CALLS | VCPU_STATE_CALLS or not refused(located.entry):
                continue
            run = _next_run_without_retry(located, calls[position + 1 :], name in VM_STATE_CALLS)
            if run is not None:
                yield Hit(
                    role,
                    located.index,
                    f"{name} failed with {located.entry['errno']} and the VMM went on to "
                    f"{role}[{run.index}] KVM_RUN as if it had succeeded",
                )


def _next_run_without_retry(
    failure: Located, later: Sequence[Located], vm_wide: bool
) -> Located | None:
    """The first KVM_RUN this failure affects, unless the VMM made the call again and KVM
    accepted it first (or stopped using the fd it failed on)."""
    name, role = request(failure.entry), fd(failure.entry)
    for located in later:
        entry = located.entry
        if request(entry) == name and fd(entry) == role and not failed(entry):
            return None
        if request(entry) == "KVM_RUN" and (vm_wide or fd(entry) == role):
            return located
    return None


def _run_unmapped(document: TraceDocument) -> Iterator[Hit]:
    """A vCPU's first KVM_RUN with no kvm_run mapping."""
    for role, vcpu, located in _first_runs(document, _maps_kvm_run, _unmaps_kvm_run):
        yield Hit(
            role,
            located.index,
            f"{vcpu}'s first KVM_RUN with its kvm_run page never mapped: the VMM cannot read "
            "why the vCPU exited",
        )


def _run_on_creation_registers(document: TraceDocument) -> Iterator[Hit]:
    """A vCPU's first KVM_RUN before any KVM_SET_REGS / KVM_SET_SREGS(2)."""
    for role, vcpu, located in _first_runs(document, _sets_registers):
        yield Hit(
            role,
            located.index,
            f"{vcpu}'s first KVM_RUN before any KVM_SET_REGS/KVM_SET_SREGS: the guest starts "
            "from the registers KVM set when it created the vCPU, before any CPUID (RDX 0x600, "
            "not the processor signature), which the VMM never chose and cannot set again",
        )


def _first_runs(
    document: TraceDocument,
    setup: Callable[[Located], str | None],
    undo: Callable[[Located], str | None] = lambda located: None,
) -> Iterator[tuple[str, str, Located]]:
    """(thread, vCPU, call) for each vCPU's first KVM_RUN that no `setup` call (not undone
    since by `undo`) preceded: in its thread before it, or in another thread (whose order
    the trace does not know)."""
    anywhere = _facts_anywhere(document, setup)
    for role, calls in calls_in_order(document):
        done: set[str] = set()
        ran: set[str] = set()
        for located in calls:
            vcpu = fd(located.entry)
            if setup(located) is not None:
                done.add(vcpu)
            undone = undo(located)
            if undone is not None:
                done.discard(undone)
            if request(located.entry) != "KVM_RUN" or vcpu in ran or not is_vcpu_fd(vcpu):
                continue
            ran.add(vcpu)
            if vcpu not in done and not _elsewhere(role, vcpu, anywhere):
                yield role, vcpu, located


def _closed_while_mapped(document: TraceDocument) -> Iterator[Hit]:
    """A vCPU fd closed while its kvm_run mapping stays: the mapping keeps the vCPU's file, so
    neither the vCPU nor its VM is freed while the mapping lives (never unmapped here)."""
    unmapped_anywhere = _facts_anywhere(document, _unmaps_kvm_run)
    for role, calls in calls_in_order(document):
        mapped: set[str] = set()
        closed: list[tuple[str, Located]] = []
        for located in calls:
            vcpu = _maps_kvm_run(located)
            if vcpu is not None:
                mapped.add(vcpu)
            gone = _unmaps_kvm_run(located)
            if gone is not None:
                mapped.discard(gone)
                closed = [(v, c) for v, c in closed if v != gone]
            closing = fd(located.entry) if located.entry.get("call") == "close" else ""
            if is_vcpu_fd(closing) and closing in mapped:
                closed.append((closing, located))
        for vcpu, located in closed:
            if not _elsewhere(role, vcpu, unmapped_anywhere):
                yield Hit(
                    role,
                    located.index,
                    f"close of {vcpu} while its kvm_run page stays mapped (never unmapped): the "
                    f"mapping holds the vCPU's file, so the vCPU and its VM outlive every fd the "
                    "VMM closes",
                )


def _maps_kvm_run(located: Located) -> str | None:
    entry = located.entry
    if entry.get("call") == "mmap" and is_vcpu_fd(fd(entry)) and integer(entry.get("offset")) == 0:
        return fd(entry)
    return None


def _sets_registers(located: Located) -> str | None:
    if request(located.entry) in REGISTER_CALLS and not failed(located.entry):
        return fd(located.entry)
    return None


def _unmaps_kvm_run(located: Located) -> str | None:
    if located.entry.get("call") != "munmap":
        return None
    return _unmapped_kvm_run(located) or None


def _unmapped_kvm_run(located: Located) -> str:
    """The vCPU whose kvm_run page this munmap removes, or ""."""
    target = address(located.entry.get("addr"))
    if target is None or not target[0].startswith(_KVM_RUN_MAPPING):
        return ""
    return target[0].removeprefix(_KVM_RUN_MAPPING)


def _facts_anywhere(
    document: TraceDocument, fact: Callable[[Located], str | None]
) -> dict[str, set[str]]:
    """vCPU fd -> the threads where `fact` holds for it at some call."""
    found: dict[str, set[str]] = {}
    for role, calls in calls_in_order(document):
        for located in calls:
            vcpu = fact(located)
            if vcpu is not None:
                found.setdefault(vcpu, set()).add(role)
    return found


def _elsewhere(role: str, vcpu: str, anywhere: dict[str, set[str]]) -> bool:
    """Done in another thread: the trace does not say in which order, so it may well be before."""
    return bool(anywhere.get(vcpu, set()) - {role})


RULES = (
    Rule(
        id="KVMC006",
        name="RunAfterRefusedSetup",
        title="A KVM call that sets up state failed and the VMM ran the vCPU anyway",
        severity=Severity.ERROR,
        incidents=("google/gvisor#6491",),
        rationale=(
            "When KVM refuses a memory slot, register state, CPUID, MSRs or an interrupt "
            "route, the guest runs on whatever state was there before: missing memory, a "
            "reset vCPU, a route that never fires. A VMM must treat the error as fatal or make "
            "the call again successfully before the next KVM_RUN. EINTR and EAGAIN are retry "
            "requests, not refusals; probes (CHECK_EXTENSION, ENABLE_CAP, E2BIG size queries) "
            "are not judged."
        ),
        check=_carried_on_after_failure,
    ),
    Rule(
        id="KVMC009",
        name="RunWithoutKvmRunMapping",
        title="KVM_RUN with the vCPU's kvm_run page never mapped",
        severity=Severity.ERROR,
        incidents=(),
        rationale=(
            "After KVM_RUN returns, why the vCPU exited is in the kvm_run page the VMM mmaps from "
            "the vCPU fd (KVM_GET_VCPU_MMAP_SIZE bytes); a VMM that never mapped it cannot "
            "handle the exit. No public incident is cited: the rule follows the KVM API "
            "documentation (Documentation/virt/kvm/api.rst, KVM_RUN and KVM_GET_VCPU_MMAP_SIZE)."
        ),
        check=_run_unmapped,
    ),
    Rule(
        id="KVMC010",
        name="RunOnCreationRegisters",
        title="KVM_RUN before the VMM set the vCPU's registers",
        severity=Severity.ERROR,
        incidents=(),
        rationale=(
            "KVM resets a vCPU when it creates it, before the VMM can give it CPUID "
            "(kvm_arch_vcpu_create() calls kvm_vcpu_reset(), arch/x86/kvm/x86.c): RDX then "
            "holds KVM's fallback signature 0x600 instead of CPUID.1:EAX of the table the VMM "
            "sets later, which firmware reads as the processor's family, model and stepping. "
            "A vCPU run before any KVM_SET_REGS / KVM_SET_SREGS(2) runs on that state: no "
            "reset of the CPU the VMM configured produces it, and the VMM, having never "
            "written it, cannot put it back after a reboot or a restore. An error, not a "
            "warning: the guest sees a CPU signature that contradicts its CPUID. Firmware "
            "VMMs set the reset vector's registers explicitly, as QEMU does."
        ),
        check=_run_on_creation_registers,
        kernel_source=("arch/x86/kvm/x86.c (kvm_vcpu_reset)",),
    ),
    Rule(
        id="KVMC012",
        name="VcpuClosedWhileMapped",
        title="A vCPU fd closed while its kvm_run page stays mapped",
        severity=Severity.ERROR,
        incidents=("Freax13/mushroom#99",),
        rationale=(
            "The kvm_run mapping holds a reference to the vCPU's file, and the vCPU holds its "
            "VM: kvm_vcpu_release() (virt/kvm/kvm_main.c) runs only when the last reference "
            "goes, so closing the vCPU fd (and the VM fd after it) frees neither while the "
            "page stays mapped. The VM, its memory, timers and (for confidential guests) its "
            "hardware keys live on until the VMM exits: mushroom's VMs never shut down and "
            "ran out of TDX HKIDs until it unmapped kvm_run. munmap the page before closing, "
            "or at all; an unmap in another thread counts, as its order is not recorded."
        ),
        check=_closed_while_mapped,
    ),
)
