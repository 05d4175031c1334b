"""`abi`, `scenarios`, `run`: the ABI table and the VMM core's scenarios."""

from __future__ import annotations

import argparse
import sys

from conformance.abi import ioctls
from conformance.model.scenarios import SCENARIOS
from conformance.vmm import machine


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    abi = commands.add_parser(
        "abi", help="print the KVM ioctl table: NAME 0xNUMBER DIRECTION FDKIND ARGTYPE"
    )
    abi.set_defaults(command=_abi)

    scenarios = commands.add_parser("scenarios", help="list the VMM core's scenarios")
    scenarios.set_defaults(command=_scenarios)

    run = commands.add_parser(
        "run",
        help="run a scenario on the VMM core; prints the guest's serial output and exits with "
        "its debug-exit status (0 after HLT)",
    )
    run.add_argument("scenario", metavar="SCENARIO")
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
