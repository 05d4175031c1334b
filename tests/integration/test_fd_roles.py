"""One namer for every source: the same calls give the same fd roles whether the tracer saw them
or strace logged them (model/fd_roles.py is the namer both use).

The tracee opens /dev/kvm twice, creates a VM on each, duplicates VM fds in every way a VMM
can, creates a vCPU of each VM through a duplicate and uses it from a thread of its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conformance.model.document import TraceDocument
from conformance.normalize.capture import capture_output
from conformance.normalize.strace_import import import_strace_log

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_gcc]

_TRACEE = Path(__file__).parents[1] / "fixtures" / "tracees" / "fd_roles.c"
_NAMING_KEYS = ("call", "fd", "req", "arg", "ret")


@pytest.fixture(scope="module")
def tracee(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = tmp_path_factory.mktemp("fd_roles") / "fd_roles"
    subprocess.run(["gcc", "-O1", "-Wall", "-pthread", "-o", str(binary), str(_TRACEE)], check=True)
    return str(binary)


def _naming(document: TraceDocument) -> dict[str, list[tuple[object, ...]]]:
    """Per thread, each call's fd, request, argument and result: where the roles show."""
    return {
        role: [tuple(call.entry.get(key) for key in _NAMING_KEYS) for call in calls]
        for role, calls in document.threads.items()
    }


def test_the_tracer_and_the_strace_importer_name_fds_alike(tracee: str, tmp_path: Path) -> None:
    traced = capture_output([tracee], {"tool": "test"})
    assert traced.outcome.exit_status == 0, traced.error_output
    log = tmp_path / "fd_roles.strace"
    subprocess.run(["strace", "-f", "-yy", "-X", "verbose", "-o", str(log), tracee], check=True)

    imported = import_strace_log(log).document

    assert _naming(imported) == _naming(traced.document)
    roles = {call.entry.get("fd") for calls in traced.document.threads.values() for call in calls}
    assert {"kvm", "kvm2", "vm", "vm2", "vcpu0", "vm2.vcpu0"} <= roles
    calls = [call.name for calls in traced.document.threads.values() for call in calls]
    assert {"dup", "dup2", "dup3", "fcntl", "KVM_CREATE_VCPU", "close"} <= set(calls)
    opens = [call.entry for call in traced.document.threads["main"] if call.name == "open"]
    assert [entry["ret"] for entry in opens] == ["kvm", "kvm2"]
