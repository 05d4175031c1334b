"""Interrupt rules: an irqfd must have its GSI routed before it is assigned."""

from __future__ import annotations

from collections.abc import Iterator

from conformance.lint.calls import calls_in_order
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import entries, failed, integer, request
from conformance.model.calls import section as fields
from conformance.model.document import Located, TraceDocument

# KVM_CREATE_IRQCHIP installs a default routing table for GSIs 0-23 (the PIC's 16 pins and the
# IOAPIC's 24): kvm_setup_default_irq_routing, arch/x86/kvm/irq_comm.c.
DEFAULT_ROUTED_GSIS = frozenset(range(24))
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0  # include/uapi/linux/kvm.h


def _routed_gsis(located: Located) -> frozenset[int]:
    found = set()
    for route in entries(fields(located.entry, "in")):
        gsi = integer(route.get("gsi"))
        if gsi is not None:
            found.add(gsi)
    return frozenset(found)


def _irqfd_before_routing(document: TraceDocument) -> Iterator[Hit]:
    """A KVM_IRQFD on a GSI that no route covers yet, followed by a KVM_SET_GSI_ROUTING that
    routes it: the order cloud-hypervisor#6348 reversed (an irqfd assigned first can fire with
    no route, and older kernels oopsed updating it: AMD's svm_update_pi_irte)."""
    for role, calls in calls_in_order(document):
        routed: frozenset[int] = frozenset()
        unrouted_irqfds: list[tuple[Located, int]] = []
        for located in calls:
            name = request(located.entry)
            if failed(located.entry):
                continue
            if name == "KVM_CREATE_IRQCHIP":
                routed = routed | DEFAULT_ROUTED_GSIS
            elif name == "KVM_IRQFD":
                arguments = fields(located.entry, "in")
                gsi, flags = integer(arguments.get("gsi")), integer(arguments.get("flags")) or 0
                if gsi is not None and not flags & KVM_IRQFD_FLAG_DEASSIGN and gsi not in routed:
                    unrouted_irqfds.append((located, gsi))
            elif name == "KVM_SET_GSI_ROUTING":
                routed = _routed_gsis(located)
                for irqfd, gsi in unrouted_irqfds:
                    if gsi in routed:
                        yield Hit(
                            role,
                            irqfd.index,
                            f"KVM_IRQFD on GSI {gsi} is assigned before "
                            f"{role}[{located.index}] KVM_SET_GSI_ROUTING routes that GSI",
                        )
                unrouted_irqfds = [(i, g) for i, g in unrouted_irqfds if g not in routed]


RULES = (
    Rule(
        id="KVMC003",
        name="IrqfdBeforeGsiRoute",
        title="KVM_IRQFD assigned on a GSI before KVM_SET_GSI_ROUTING routes it",
        severity=Severity.ERROR,
        incidents=("cloud-hypervisor/cloud-hypervisor#6348",),
        rationale=(
            "An irqfd is bound to a GSI; KVM delivers its interrupt through the GSI's route. "
            "Assigned before the route exists, the eventfd can fire with nowhere to go, and "
            "kernels without commit a80ced6e oops when the later routing update reaches the "
            "irqfd (AMD AVIC). Set the routing table first, then assign irqfds. GSIs 0-23 are "
            "routed by KVM_CREATE_IRQCHIP's default table. Only orders within one thread are "
            "judged: a trace does not record the order of calls in different threads."
        ),
        check=_irqfd_before_routing,
    ),
)
