"""`abi`, `scenarios`, `run`: the ABI table, the scenarios `check` knows, the VMM core's runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from conformance.abi import ioctls
from conformance.cli.arguments import add_command
from conformance.cli.configuration import add_config_option, project
from conformance.model.printable import shown
from conformance.model.scenarios import SCENARIOS, Scenario
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
        summary="list the scenarios: the project's (what `check` gates) and the built-in ones",
        description="List the scenarios of the project's configuration, each with what it "
        "runs and where it is defined (what `check` gates), then the built-in scenarios of "
        "kvm-conformance's own small VMM (what `check --builtin` traces and `run` runs).",
        examples=["kvm-conformance scenarios", "kvm-conformance scenarios --config ci.toml"],
    )
    add_config_option(scenarios)
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
    configured = project(args)
    # In this repository the built-in scenarios are the project's too: listed once.
    own = [scenario for scenario in configured.scenarios.values() if scenario.command is not None]
    if not own:
        _print_scenarios(SCENARIOS.values())
        return 0
    # Two groups, each under a `#` line naming where it comes from and which command runs it.
    print(f"# {configured.config_file}: the project's scenarios (`kvm-conformance check`)")
    _print_scenarios(own)
    print("# built-in: the VMM core's (`check --builtin`, `kvm-conformance run`)")
    _print_scenarios(SCENARIOS.values())
    return 0


def _print_scenarios(scenarios: Iterable[Scenario]) -> None:
    listed = sorted(scenarios, key=lambda scenario: scenario.name)
    width = max(len(scenario.name) for scenario in listed)
    for scenario in listed:
        where = f"  ({scenario.defined_at})" if scenario.defined_at else ""
        print(shown(f"{scenario.name:<{width}}  {scenario.description}{where}"))


def _run(args: argparse.Namespace) -> int:
    result = machine.run_scenario(args.scenario)
    sys.stdout.buffer.write(result.serial_output)
    sys.stdout.flush()
    return result.status
