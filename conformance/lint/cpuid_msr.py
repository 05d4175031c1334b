"""CPUID and MSR rules: partial MSR transfers, TSC deadline restore order, CPUID after KVM_RUN."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from conformance.compare.keyed_sets import GUEST_MUTABLE_CPUID, cpuid_differences
from conformance.lint.calls import calls_in_order, is_vcpu_fd
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import answer, entries, failed, fd, integer, request, section
from conformance.model.document import Entry, Located, TraceDocument, Value
from conformance.model.host_profile import HostProfile
from conformance.model.host_symbols import resolve_call

# From arch/x86/include/asm/msr-index.h, which is not a uapi header and so not in the
# generated ABI.
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0

_MSR_TRANSFERS = ("KVM_SET_MSRS", "KVM_GET_MSRS")


def _msr_indices(located: Located) -> list[int]:
    found = []
    for entry in entries(section(located.entry, "in")):
        index = integer(entry.get("index"))
        if index is not None:
            found.append(index)
    return found


# -- KVMC001 --------------------------------------------------------------------------------


def _partial_msr_transfers(document: TraceDocument) -> Iterator[Hit]:
    """KVM_{SET,GET}_MSRS return how many MSRs they processed and stop at the first one KVM
    refuses. A short count the VMM does not act on is a silently partial save or restore. Acting
    on it, as cloud-hypervisor#1543 does, is retrying with the MSRs after the refused one; a VMM
    that stops using the fd after a short count has not gone on either."""
    for role, calls in calls_in_order(document):
        for position, located in enumerate(calls):
            name = request(located.entry)
            if name not in _MSR_TRANSFERS or failed(located.entry):
                continue
            indices = _msr_indices(located)
            done = answer(located.entry)
            if done >= len(indices):
                continue
            later = calls[position + 1 :]
            if _retries_the_rest(later, fd(located.entry), indices[done + 1 :]):
                continue
            went_on = next((c for c in later if request(c.entry) and _same_fd(c, located)), None)
            if went_on is None:
                continue
            yield Hit(
                role,
                located.index,
                f"{name} processed {done} of {len(indices)} MSRs (KVM stopped at MSR "
                f"{indices[done]:#x}) and the VMM went on with {_name(went_on)} without "
                "handling the rest",
            )


def _same_fd(one: Located, other: Located) -> bool:
    return fd(one.entry) == fd(other.entry)


def _retries_the_rest(later: Sequence[Located], role: str, rest: Sequence[int]) -> bool:
    if not rest:
        return False
    for located in later:
        if request(located.entry) in _MSR_TRANSFERS and fd(located.entry) == role:
            return set(rest) <= set(_msr_indices(located))
    return False


def _name(located: Located) -> str:
    return f"{located.thread}[{located.index}] {located.call.name}"


# -- KVMC002 --------------------------------------------------------------------------------


def _tsc_deadline_order(document: TraceDocument) -> Iterator[Hit]:
    for role, calls in calls_in_order(document):
        yield from _deadline_before_tsc(role, calls)
        yield from _deadline_before_lapic(role, calls)


def _deadline_before_tsc(role: str, calls: Sequence[Located]) -> Iterator[Hit]:
    """KVM arms the deadline timer against the guest TSC it has when the deadline is written:
    a TSC restored later in the same list makes that comparison wrong (firecracker#4666)."""
    for located in calls:
        if request(located.entry) != "KVM_SET_MSRS":
            continue
        indices = _msr_indices(located)
        if MSR_IA32_TSC in indices and MSR_IA32_TSC_DEADLINE in indices:
            deadline, tsc = indices.index(MSR_IA32_TSC_DEADLINE), indices.index(MSR_IA32_TSC)
            if deadline < tsc:
                yield Hit(
                    role,
                    located.index,
                    f"MSR_IA32_TSC_DEADLINE (entry {deadline}) is restored before MSR_IA32_TSC "
                    f"(entry {tsc}): KVM arms the deadline against the TSC it had before",
                )


def _deadline_before_lapic(role: str, calls: Sequence[Located]) -> Iterator[Hit]:
    """KVM drops a TSC deadline written while the LAPIC timer is not in TSC-deadline mode, and
    KVM_SET_LAPIC clears the stored deadline when it sets the mode (kata-containers#13798): the
    deadline that counts is one written after the vCPU's last KVM_SET_LAPIC before it runs."""
    written: dict[str, Located] = {}  # vCPU fd -> last SET_MSRS carrying the deadline
    dropped: dict[str, tuple[Located, Located]] = {}  # vCPU fd -> (that SET_MSRS, SET_LAPIC)
    for located in calls:
        name, vcpu = request(located.entry), fd(located.entry)
        if not is_vcpu_fd(vcpu) or failed(located.entry):
            continue
        if name == "KVM_SET_MSRS" and MSR_IA32_TSC_DEADLINE in _msr_indices(located):
            dropped.pop(vcpu, None)
            written[vcpu] = located
        elif name == "KVM_SET_LAPIC" and vcpu in written:
            dropped[vcpu] = (written.pop(vcpu), located)
        elif name == "KVM_RUN" and vcpu in dropped:
            yield _dropped_deadline(role, *dropped.pop(vcpu))
    for msrs, lapic in dropped.values():
        yield _dropped_deadline(role, msrs, lapic)


def _dropped_deadline(role: str, msrs: Located, lapic: Located) -> Hit:
    return Hit(
        role,
        msrs.index,
        f"MSR_IA32_TSC_DEADLINE is restored before {_name(lapic)} and not again after it: "
        "KVM drops a deadline set while the LAPIC timer is not in TSC-deadline mode",
    )


# -- KVMC004 --------------------------------------------------------------------------------


def _cpuid_after_run(document: TraceDocument) -> Iterator[Hit]:
    """Since Linux 5.16 KVM refuses KVM_SET_CPUID2 with different entries once the vCPU has run
    (cloud-hypervisor#4156); before that it accepted it and left the vCPU inconsistent."""
    cpuid_by_vcpu = _last_cpuid_per_vcpu(document)
    profile = HostProfile.of(document)
    for role, calls in calls_in_order(document):
        current: dict[str, list[Mapping[str, Value]]] = {}
        ran: set[str] = set()
        for located in calls:
            name, vcpu = request(located.entry), fd(located.entry)
            if name == "KVM_RUN" and not failed(located.entry):
                ran.add(vcpu)
            elif name == "KVM_SET_CPUID2":
                new = _cpuid_entries(located.entry, profile)
                before = current.get(vcpu, cpuid_by_vcpu.get(vcpu, []))
                if vcpu in ran:
                    changed = cpuid_differences(before, new, GUEST_MUTABLE_CPUID)
                    if changed:
                        first = changed[0]
                        yield Hit(
                            role,
                            located.index,
                            f"KVM_SET_CPUID2 after {vcpu}'s first KVM_RUN changes "
                            f"{len(changed)} CPUID field(s), first {first.key} "
                            f"{first.field or 'entry'}",
                        )
                if not failed(located.entry):
                    current[vcpu] = new


def _last_cpuid_per_vcpu(document: TraceDocument) -> dict[str, list[Mapping[str, Value]]]:
    """What each vCPU's CPUID was set to in any thread: the baseline for a thread that set none
    itself before running (cross-thread order is unknown, so this is the best available)."""
    found: dict[str, list[Mapping[str, Value]]] = {}
    profile = HostProfile.of(document)
    for located in document.calls():
        entry = located.entry
        if request(entry) == "KVM_SET_CPUID2" and not failed(entry):
            found.setdefault(fd(entry), _cpuid_entries(entry, profile))
    return found


def _cpuid_entries(entry: Entry, profile: HostProfile) -> list[Mapping[str, Value]]:
    """The entries a KVM_SET_CPUID2 set, its host symbols (`entries: host`) read as values."""
    return entries(section(resolve_call(entry, profile), "in"))


RULES = (
    Rule(
        id="KVMC001",
        name="PartialMsrTransfer",
        title="KVM_SET_MSRS / KVM_GET_MSRS processed fewer MSRs than asked and the VMM went on",
        severity=Severity.ERROR,
        incidents=("cloud-hypervisor/cloud-hypervisor#1543",),
        rationale=(
            "KVM_SET_MSRS and KVM_GET_MSRS do not fail when KVM refuses an MSR: they stop there "
            "and return how many entries they processed. A VMM that ignores a short count "
            "saves or restores part of the vCPU's MSRs without noticing. Reported when a later "
            "call uses the same fd and the MSRs after the refused one were not retried."
        ),
        check=_partial_msr_transfers,
    ),
    Rule(
        id="KVMC002",
        name="TscDeadlineRestoreOrder",
        title="MSR_IA32_TSC_DEADLINE restored before the LAPIC, or before MSR_IA32_TSC",
        severity=Severity.ERROR,
        incidents=("kata-containers/kata-containers#13798", "firecracker-microvm/firecracker#4666"),
        rationale=(
            "KVM drops a TSC deadline written while the LAPIC timer is not in TSC-deadline mode, "
            "and KVM_SET_LAPIC clears the stored deadline when it sets the mode; a restored "
            "vCPU then never gets its timer interrupt. The deadline must be written after the "
            "vCPU's last KVM_SET_LAPIC before it runs. Within one KVM_SET_MSRS, MSR_IA32_TSC "
            "must come before MSR_IA32_TSC_DEADLINE, because KVM compares the deadline with the "
            "guest TSC it has at that moment."
        ),
        check=_tsc_deadline_order,
    ),
    Rule(
        id="KVMC004",
        name="CpuidChangedAfterRun",
        title="KVM_SET_CPUID2 with different entries after the vCPU's first KVM_RUN",
        severity=Severity.ERROR,
        incidents=("cloud-hypervisor/cloud-hypervisor#4156",),
        rationale=(
            "Since Linux 5.16 KVM refuses KVM_SET_CPUID2 after a vCPU has run unless the entries "
            "are unchanged; older kernels accepted it and left the vCPU's derived state stale. "
            "Entries are compared as a set keyed by (function, index), leaving out the bits KVM "
            "itself updates while the guest runs (OSXSAVE, APIC, OSPKE, XSAVE sizes)."
        ),
        check=_cpuid_after_run,
    ),
)
