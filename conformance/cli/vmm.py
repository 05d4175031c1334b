"""`abi`, `scenarios`, `run`: the ABI table and the VMM core's scenarios."""

from __future__ import annotations

import argparse
import sys

from conformance.abi import ioctls
from conformance.cli.arguments import add_command
from conformance.model.scenarios import SCENARIOS
from conformance.vmm import machine


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    abi = add_command(
        commands,
        "abi",
        summary="print the KVM ioctl table: NAME 0xNUMBER DIRECTION FDKIND ARGTYPE",
        description="Print every KVM ioctl whose number exists on x86-64, one a line: its name, "
        "request number, direction as the kernel reads it, the kinds of fd it is valid on and "
        "its argument's C type, all generated from <linux/kvm.h>.",
        examples=["kvm-conformance abi", "kvm-conformance abi | grep CPUID"],
    )
    abi.set_defaults(command=_abi)

    scenarios = add_command(
        commands,
        "scenarios",
        summary="list the VMM core's scenarios",
        description="List the scenarios of the project's own small VMM (the ones `check` "
        "traces and `run` runs), each with what it does.",
        examples=["kvm-conformance scenarios"],
    )
    scenarios.set_defaults(command=_scenarios)

    run = add_command(
        commands,
        "run",
        summary="run a scenario on the VMM core and print the guest's serial output",
        description="Run one scenario on the project's VMM core, untraced. The guest's serial "
        "output goes to stdout; the exit status is the guest's debug-exit status as QEMU's "
        "isa-debug-exit gives it ((value << 1) | 1), or 0 when the guest halts.",
        examples=["kvm-conformance run hello", "kvm-conformance run tiny-bios; echo $?"],
    )
    run.add_argument("scenario", metavar="SCENARIO", help="a name from `kvm-conformance scenarios`")
    run.set_defaults(command=_run)


def _abi(args: argparse.Namespace) -> int:
    for line in ioctls.describe_table():
        print(line)
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    width = max(len(name) for name in SCENARIOS)
    for name, scenario in sorted(SCENARIOS.items()):
        print(f"{name:<{width}}  {scenario.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    result = machine.run_scenario(args.scenario)
    sys.stdout.buffer.write(result.serial_output)
    sys.stdout.flush()
    return result.status
