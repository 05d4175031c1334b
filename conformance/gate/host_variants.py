"""Per-host variant snapshots: `NAME.<host-class>.yaml`, the fallback when hosts really differ.

One snapshot per scenario is the goal: a snapshot recorded on another host compares in the VMM's
decisions (compare/host_differences.py). When a VMM really takes another path on another kind
of host, and the portable comparison cannot reconcile the two, the scenario may keep a variant
for that kind of host (the host class is the CPU vendor: `hello.intel.yaml`). A host of that
class is compared with its variant; `--update` writes one only then:

- on a host of the snapshot's own class (or with no snapshot yet), the snapshot is updated;
- on a host of another class, a trace equal in decisions leaves everything as it is (no file
  flips between hosts on every update); one that differs becomes that class's variant, and a
  variant the snapshot now reconciles with is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.compare.regression import compare_documents
from conformance.model.document import TraceDocument
from conformance.model.host_profile import HostProfile, host_class
from conformance.snapshot.store import SnapshotStore, WriteOutcome


def trace_host_class(document: TraceDocument) -> str | None:
    return host_class(HostProfile.of(document))


def variant_name(scenario: str, host: str) -> str:
    return f"{scenario}.{host}"


def stored_variants(store: SnapshotStore, scenario: str) -> dict[str, TraceDocument]:
    """The scenario's variants in the store, by host class (read, and so not unused)."""
    pattern = re.compile(re.escape(scenario) + r"\.([a-z0-9]+)")
    found: dict[str, TraceDocument] = {}
    for name in store.names():
        matched = pattern.fullmatch(name)
        if matched is not None:
            document = store.load(name)
            if document is not None:
                found[matched.group(1)] = document
    return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The snapshot a trace is compared with: its name in the store and its document."""

    name: str
    document: TraceDocument | None


def snapshot_for(
    scenario: str,
    expected: TraceDocument | None,
    variants: dict[str, TraceDocument],
    document: TraceDocument,
) -> Snapshot:
    """This host's class's variant where there is one, else the scenario's snapshot."""
    host = trace_host_class(document)
    if host is not None and host in variants:
        return Snapshot(variant_name(scenario, host), variants[host])
    return Snapshot(scenario, expected)


def stage_update(
    store: SnapshotStore,
    scenario: str,
    expected: TraceDocument | None,
    variants: dict[str, TraceDocument],
    document: TraceDocument,
) -> tuple[str, WriteOutcome]:
    """Stage `document` where an update puts it (the rules above): the name, and the outcome."""
    host = trace_host_class(document)
    theirs = trace_host_class(expected) if expected is not None else None
    if expected is None or host is None or theirs is None or theirs == host:
        return scenario, store.stage(scenario, document)
    name = variant_name(scenario, host)
    if compare_documents(expected, document, scenario=scenario).ok:
        if host in variants:
            store.stage_removal(name)  # reconciled now: the variant is no longer needed
            return name, "updated"
        return scenario, "unchanged"
    return name, store.stage(name, document)
