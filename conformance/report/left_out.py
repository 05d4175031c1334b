"""What a comparison left out as not VMM decisions, for `--not-decisions`: how many, and why.

3 differences left out: not VMM decisions (abi/not_decisions.py)
  2 x kvm_pit_channel_state.count_load_time (clock; e.g. KVM_SET_PIT2 in.channels[1]...):
      the host clock when the PIT counter was loaded: ...
"""

from __future__ import annotations

from conformance.compare.decisions import LeftOut, left_out_summary


def render_left_out(left_out: list[LeftOut]) -> list[str]:
    """Lines for `left_out`; one line saying there were none when it is empty."""
    if not left_out:
        return ["no differences left out as not VMM decisions"]
    count = len(left_out)
    lines = [
        f"{count} difference{'s' * (count != 1)} left out: not VMM decisions "
        "(conformance/abi/not_decisions.py)"
    ]
    for many, row, example in left_out_summary(left_out):
        lines.append(
            f"  {many} x {row.struct}.{row.field} ({row.why.value}; e.g. {example}): {row.reason}"
        )
    return lines
