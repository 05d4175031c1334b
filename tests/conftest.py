"""What the kvm_conformance plugin does not do for this project's own suite.

The needs_kvm / needs_ptrace / needs_qemu / needs_gcc markers and their skips come from the
plugin (conformance/pytest_plugin/, installed as a pytest11 entry point). Here: pytester for
the plugin's own tests, and the CI rule that nothing may skip. Under
KVM_CONFORMANCE_FORBID_SKIPS=1 (set by .ci/run) a skipped test fails the session: on the CI
machine every resource exists, so a skip means a broken setup.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("KVM_CONFORMANCE_FORBID_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return  # -p no:terminal: no statistics to read
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(
            f"KVM_CONFORMANCE_FORBID_SKIPS: {len(skipped)} test(s) skipped on a machine that "
            "must run them all",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
