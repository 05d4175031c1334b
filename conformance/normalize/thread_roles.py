"""Thread ids -> roles named after what each thread does, the same on every run.

Thread ids differ from run to run and so does the order in which threads are scheduled; what a
thread does with KVM does not. The thread that opens /dev/kvm or creates the VM is `main`; a
thread that runs vCPUs is named after them (`vcpu0`, or `vcpu0+vcpu1` for one thread running
two); any other thread after the first fd (or call) it used (`thread:vm`). Threads that end up
with the same name are told apart by their calls, not by when they started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conformance.model.document import TraceCall, thread_role_order


@dataclass(slots=True)
class ThreadFacts:
    opened_kvm: bool = False  # opened /dev/kvm or created a VM
    touched_kvm: bool = False  # made any call on a KVM fd
    runs: set[str] = field(default_factory=set)  # vCPU roles it issued KVM_RUN on
    first_call: str = "?"  # the first kept call's fd role, or its name when it has no fd

    def base_role(self) -> str:
        if self.opened_kvm:
            return "main"
        if self.runs:
            return "+".join(sorted(self.runs, key=thread_role_order))
        return f"thread:{self.first_call}"


def assign_roles(threads: Sequence[tuple[str, list[TraceCall]]]) -> list[str]:
    """Final roles for (base role, calls) pairs, in the same order; duplicates get `#2`, `#3`.

    Among threads sharing a base role, the order is that of their calls' text, which does not
    depend on thread ids or scheduling.
    """
    by_role: dict[str, list[int]] = {}
    for index, (role, _) in enumerate(threads):
        by_role.setdefault(role, []).append(index)
    roles = [role for role, _ in threads]
    for role, indices in by_role.items():
        if len(indices) == 1:
            continue
        indices.sort(key=lambda index: repr([call.entry for call in threads[index][1]]))
        for rank, index in enumerate(indices[1:], start=2):
            roles[index] = f"{role}#{rank}"
    return roles
