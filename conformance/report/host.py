"""The host block: how two traces' hosts differ, said once, and what the hosts explain.

    host: recorded on AMD EPYC (75 CPUID entries), running on Intel(R) Xeon(R) Processor (59)
      CPU vendor: AuthenticAMD → GenuineIntel
      MSR index list: 40 → 41 entries (+0x3a)
      TSC: 2596150 kHz → 2599998 kHz
      the VMM's decisions compared: inputs equal to their host's answer compare as that answer

Every face prints this block (check, diff, the pytest plugin; JSON and HTML carry its lines), from
compare/host_differences.py's `HostContext.lines()`.
"""

from __future__ import annotations

from conformance.compare.host_differences import HostContext
from conformance.compare.regression import Comparison, DifferenceKind
from conformance.report.causes import thread_label

COMPARED = (
    "the VMM's decisions compared: inputs equal to their host's answer compare as that answer"
)


DIFF_HOSTS = ("reference recorded on", "subject on")  # `diff SUBJECT REFERENCE`'s sides


def host_lines(hosts: HostContext | None, before: str, after: str) -> list[str]:
    """The hosts' differences, one a line ([] when the hosts agree or are unknown)."""
    return hosts.lines(before, after) if hosts is not None else []


def host_block(
    hosts: HostContext | None, before: str = "recorded on", after: str = "running on"
) -> str:
    """The block as text ("" when the hosts agree)."""
    return render_host_lines(host_lines(hosts, before, after))


def render_host_lines(lines: list[str]) -> str:
    """Lines of `host_lines` (or several merged) as the block."""
    if not lines:
        return ""
    body = [f"host: {lines[0]}", *(f"  {line}" for line in lines[1:]), f"  {COMPARED}"]
    return "\n".join(body) + "\n"


def explained_lines(comparison: Comparison) -> list[str]:
    """Calls made on one host only after a probe the hosts answered otherwise, one a line."""
    found = []
    for difference in comparison.differences:
        if not difference.explained_by:
            continue
        if difference.kind is DifferenceKind.MISSING_CALL:
            index, side = difference.expected_index, "only on the recording host"
        else:
            index, side = difference.actual_index, "only on this host"
        found.append(
            f"explained by the host: {thread_label(difference.thread)}, call #{index} "
            f"{difference.call_name} ({side}), after {difference.explained_by}"
        )
    return found
