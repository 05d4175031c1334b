"""Interrupt rules: an irqfd's GSI must be routed before it is assigned, and stay routed.

KVM_SET_GSI_ROUTING replaces the whole routing table, the default one KVM_CREATE_IRQCHIP
installed included: a table that leaves out GSI 5 unroutes the irqfd assigned on GSI 5 as
surely as one that never routed it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from conformance.abi import _generated as abi
from conformance.lint.calls import calls_in_order
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import entries, failed, integer, request
from conformance.model.calls import section as fields
from conformance.model.document import Located, TraceDocument, Value

Route = frozenset[tuple[int, str]]  # (routing entry type, its `u` member as text)
KVM_IRQFD_FLAG_DEASSIGN: int = abi.KVM_IRQFD_FLAG_DEASSIGN
_IRQCHIP: int = abi.KVM_IRQ_ROUTING_IRQCHIP
_PIC_MASTER, _PIC_SLAVE, _IOAPIC = 0, 1, 2  # KVM_IRQCHIP_PIC_MASTER/SLAVE, KVM_IRQCHIP_IOAPIC
_IOAPIC_PINS = 24
_PIC_PINS = 16


def _irqchip_route(chip: int, pin: int) -> tuple[int, str]:
    return (_IRQCHIP, f"irqchip {chip} pin {pin}")


def _default_routes() -> dict[int, Route]:
    """KVM_CREATE_IRQCHIP's table (kvm_setup_default_irq_routing, arch/x86/kvm/irq_comm.c):
    GSI 0-15 to the PIC pin and the IOAPIC pin of their number, 16-23 to the IOAPIC only."""
    routes: dict[int, Route] = {}
    for gsi in range(_IOAPIC_PINS):
        route = {_irqchip_route(_IOAPIC, gsi)}
        if gsi < _PIC_PINS:
            route.add(_irqchip_route(_PIC_MASTER if gsi < 8 else _PIC_SLAVE, gsi % 8))
        routes[gsi] = frozenset(route)
    return routes


DEFAULT_ROUTES: Mapping[int, Route] = _default_routes()


def _routing_table(located: Located) -> dict[int, Route]:
    """GSI -> its routes in a KVM_SET_GSI_ROUTING table (a GSI may have several)."""
    table: dict[int, set[tuple[int, str]]] = {}
    for route in entries(fields(located.entry, "in")):
        gsi, kind = integer(route.get("gsi")), integer(route.get("type"))
        if gsi is None or kind is None:
            continue
        table.setdefault(gsi, set()).add((kind, _target(kind, route.get("u"))))
    return {gsi: frozenset(targets) for gsi, targets in table.items()}


def _target(kind: int, union: Value | None) -> str:
    """What a routing entry routes to, as text two entries compare by."""
    chip = union.get("irqchip") if isinstance(union, dict) else None
    if kind == _IRQCHIP and isinstance(chip, dict):
        number, pin = integer(chip.get("irqchip")), integer(chip.get("pin"))
        if number is not None and pin is not None:
            return _irqchip_route(int(number), int(pin))[1]
    return _flat(union)


def _flat(value: Value | None) -> str:
    """A route's target as plain text: `msi {address_lo=0xfee00000, data=0x30}`."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={_flat(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(item) for item in value) + "]"
    if isinstance(value, int):
        return hex(value)
    return "?" if value is None else value


@dataclass(slots=True)
class _Irqfd:
    call: Located
    gsi: int
    eventfd: Value | None
    route: Route  # the GSI's route when the irqfd was assigned (empty: none)


def _irqfd_routes(document: TraceDocument) -> Iterator[Hit]:
    for role, calls in calls_in_order(document):
        routes: dict[int, Route] = {}
        irqfds: list[_Irqfd] = []
        for located in calls:
            name = request(located.entry)
            if failed(located.entry):
                continue
            if name == "KVM_CREATE_IRQCHIP":
                routes = dict(DEFAULT_ROUTES)
            elif name == "KVM_IRQFD":
                irqfds = _assigned(irqfds, located, routes)
            elif name == "KVM_SET_GSI_ROUTING":
                routes = _routing_table(located)
                for irqfd in irqfds:
                    hit = _judge(role, irqfd, located, routes.get(irqfd.gsi, frozenset()))
                    if hit is not None:
                        yield hit
                irqfds = [
                    _Irqfd(i.call, i.gsi, i.eventfd, routes.get(i.gsi, frozenset())) for i in irqfds
                ]


def _assigned(irqfds: list[_Irqfd], located: Located, routes: dict[int, Route]) -> list[_Irqfd]:
    arguments = fields(located.entry, "in")
    gsi, flags = integer(arguments.get("gsi")), integer(arguments.get("flags")) or 0
    if gsi is None:
        return irqfds
    eventfd = arguments.get("fd")
    if flags & KVM_IRQFD_FLAG_DEASSIGN:
        return [i for i in irqfds if (i.gsi, i.eventfd) != (gsi, eventfd)]
    return [*irqfds, _Irqfd(located, gsi, eventfd, routes.get(gsi, frozenset()))]


def _judge(role: str, irqfd: _Irqfd, table: Located, route: Route) -> Hit | None:
    where = f"{role}[{table.index}] KVM_SET_GSI_ROUTING"
    if not irqfd.route and route:
        return Hit(
            role,
            irqfd.call.index,
            f"KVM_IRQFD on GSI {irqfd.gsi} is assigned before {where} routes that GSI",
        )
    if irqfd.route and not route:
        return Hit(
            role,
            irqfd.call.index,
            f"KVM_IRQFD on GSI {irqfd.gsi} loses its route: {where} replaces the whole table and "
            f"leaves GSI {irqfd.gsi} out, so the irqfd's interrupts go nowhere",
        )
    if irqfd.route and route != irqfd.route:
        return Hit(
            role,
            irqfd.call.index,
            f"KVM_IRQFD on GSI {irqfd.gsi} was assigned for {_text(irqfd.route)}; {where} "
            f"routes GSI {irqfd.gsi} to {_text(route)} under it",
            Severity.WARNING,
        )
    return None


def _text(route: Route) -> str:
    return " and ".join(target for _, target in sorted(route)) or "nothing"


RULES = (
    Rule(
        id="KVMC003",
        name="IrqfdGsiRoute",
        title="KVM_IRQFD on a GSI that KVM_SET_GSI_ROUTING routes only later, or unroutes",
        severity=Severity.ERROR,
        incidents=("cloud-hypervisor/cloud-hypervisor#6348",),
        rationale=(
            "An irqfd is bound to a GSI; KVM delivers its interrupt through the GSI's route. "
            "Assigned before the route exists, the eventfd can fire with nowhere to go, and "
            "kernels without commit a80ced6e oops when the later routing update reaches the "
            "irqfd (AMD AVIC). KVM_SET_GSI_ROUTING replaces the whole table, KVM_CREATE_IRQCHIP's "
            "default routes for GSIs 0-23 included (kvm_set_irq_routing(), virt/kvm/irqchip.c): "
            "a table that leaves out an irqfd's GSI unroutes it (an error), and one that routes "
            "it elsewhere moves the irqfd's interrupt under it (a warning: the update path of "
            "#6348). Set the routing table first, keep every irqfd's GSI in each table you set, "
            "then assign irqfds. Only orders within one thread are judged: a trace does not "
            "record the order of calls in different threads."
        ),
        check=_irqfd_routes,
    ),
)
