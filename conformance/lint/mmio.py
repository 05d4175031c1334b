"""MMIO and PIO zone rules: a coalesced zone is unregistered only as it was registered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from conformance.lint.calls import calls_in_order
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import failed, fd, integer, process_of, request, section
from conformance.model.document import Located, TraceDocument


@dataclass(frozen=True, slots=True)
class _Zone:
    addr: int
    size: int
    pio: int

    def holds(self, other: _Zone) -> bool:
        """KVM's test (coalesced_mmio_in_range(), virt/kvm/coalesced_mmio.c): the range to
        unregister lies inside this zone, on the same bus."""
        return (
            self.pio == other.pio
            and self.addr <= other.addr
            and other.addr + other.size <= self.addr + self.size
        )

    def text(self) -> str:
        bus = "PIO" if self.pio else "MMIO"
        return f"{bus} [{self.addr:#x}, {self.addr + self.size:#x})"


def _zone(located: Located) -> _Zone | None:
    arguments = section(located.entry, "in")
    addr, size = integer(arguments.get("addr")), integer(arguments.get("size"))
    if addr is None or size is None:
        return None
    return _Zone(addr, size, integer(arguments.get("pio")) or 0)


def _registrations(document: TraceDocument) -> dict[tuple[str, str], list[tuple[str, _Zone]]]:
    """Per VM (process, fd role): each zone KVM accepted, with the thread that registered it."""
    found: dict[tuple[str, str], list[tuple[str, _Zone]]] = {}
    for located in document.calls():
        zone = _zone(located)
        accepted = zone is not None and not failed(located.entry)
        if (
            request(located.entry) == "KVM_REGISTER_COALESCED_MMIO"
            and zone is not None
            and accepted
        ):
            vm = (process_of(located.thread), fd(located.entry))
            found.setdefault(vm, []).append((located.thread, zone))
    return found


def _unregistered_nothing(document: TraceDocument) -> Iterator[Hit]:
    """KVM_UNREGISTER_COALESCED_MMIO whose range no registered zone holds: one registered
    before it in its thread, or in another thread (whose order the trace does not know)."""
    registrations = _registrations(document)
    for role, calls in calls_in_order(document):
        own: list[_Zone] = []
        removed: list[_Zone] = []
        for located in calls:
            zone = _zone(located)
            name = request(located.entry)
            if zone is None or failed(located.entry):
                continue
            if name == "KVM_REGISTER_COALESCED_MMIO":
                own.append(zone)
                continue
            if name != "KVM_UNREGISTER_COALESCED_MMIO":
                continue
            vm = (process_of(role), fd(located.entry))
            others = [z for thread, z in registrations.get(vm, []) if thread != role]
            live = [z for z in (*own, *others) if z not in removed]
            holding = [z for z in live if z.holds(zone)]
            if holding:
                removed.extend(holding)
                continue
            registered = ", ".join(z.text() for z in live) or "none"
            yield Hit(
                role,
                located.index,
                f"KVM_UNREGISTER_COALESCED_MMIO of {zone.text()} matches no registered zone "
                f"(registered: {registered}): KVM answers 0 and removes nothing",
            )


RULES = (
    Rule(
        id="KVMC011",
        name="UnregisteredCoalescedZone",
        title="KVM_UNREGISTER_COALESCED_MMIO of a zone that was never registered",
        severity=Severity.ERROR,
        incidents=(),
        rationale=(
            "kvm_vm_ioctl_unregister_coalesced_mmio() (virt/kvm/coalesced_mmio.c) removes "
            "each zone of the same bus (pio) whose range holds the one given, and returns 0 "
            "whether it removed one or not: an unregister with a wrong address, size or pio "
            "fails silently. The zone the VMM meant to remove stays, and the guest's writes "
            "to it keep going to the coalesced ring instead of exiting to the device model, "
            "which sees them late or never. Unregister with the range and bus the zone was "
            "registered with. A zone registered in another thread counts, as the order of "
            "calls in different threads is not recorded."
        ),
        check=_unregistered_nothing,
        kernel_source=("virt/kvm/coalesced_mmio.c (kvm_vm_ioctl_unregister_coalesced_mmio)",),
    ),
)
