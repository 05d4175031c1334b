"""What every command line parses alike: a subcommand's help page, the traced command after
`--`, the version, and the exit statuses (one per class of outcome, the same in every command:
`EXIT_STATUSES`). The project's configuration is cli/configuration.py's: reading it loads YAML
and the gate, which `trace` must not pay for at start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from conformance.model.errors import TRACER_FAILURE_STATUS

EXIT_OK = 0
EXIT_FAILED = 1  # a judgment failed: a difference, a deviation not allowed, a rule's error
EXIT_USAGE = 2  # a usage or environment error: bad option, unreadable input, no /dev/kvm
EXIT_GUEST = 3  # a guest that stopped abnormally (`run`)
EXIT_TRACER = TRACER_FAILURE_STATUS  # the tracer failed while the program ran (125)
EXIT_NOT_STARTED = 127  # the command to trace could not be started

EXIT_STATUSES = f"""\
exit status:
  {EXIT_OK}    success: everything checked passed
  {EXIT_FAILED}    a judgment failed: a difference, a deviation not allowed, a rule's error
  {EXIT_USAGE}    a usage or environment error: a bad option, an unreadable or wrong kind
       of file, a process that does not exist, no /dev/kvm (one line on stderr)
  {EXIT_GUEST}    `run`: the guest stopped abnormally (triple fault, failed entry, run limit)
  {EXIT_TRACER}  the tracer failed while the program ran: the trace is incomplete; the
       program went on untraced to its end (or, attached, was detached)
  {EXIT_NOT_STARTED}  the command to trace could not be started
  `trace` and `run` otherwise exit with the traced program's or the guest's own status"""


def version() -> str:
    """This installation's version, as pip installed it."""
    # Imported here: importlib.metadata costs ~60 ms of start-up that only --version and
    # SARIF output need, and every `trace -- CMD` would pay it.
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version("kvm-conformance")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def project_url(label: str) -> str | None:
    """A URL of [project.urls] (Homepage, Documentation), as the installed metadata has it."""
    import importlib.metadata  # noqa: PLC0415 - as in version()

    try:
        listed = importlib.metadata.metadata("kvm-conformance").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        listed = []
    for item in listed:
        name, _, url = str(item).partition(",")
        if name.strip() == label:
            return url.strip()
    return None


class _PrintVersion(argparse.Action):
    """argparse's "version" action takes its text when the parser is built; this one looks the
    version up only when --version is given."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def add_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_PrintVersion, nargs=0, help="print the version")


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in the command list), a description and
    examples (in its own --help)."""
    shown = "\n".join(f"  {example}" for example in examples)
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"examples:\n{shown}\n\n{EXIT_STATUSES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


@dataclass(frozen=True, slots=True)
class SplitArguments:
    """A command line split at its first `--`: our arguments, and the command to trace."""

    ours: list[str]
    command: list[str] | None  # None: no `--` was given


def split_at_dashes(arguments: Sequence[str]) -> SplitArguments:
    """Everything after the first `--` is the traced command's, so that our own options may
    come before or after our positional arguments and never eat the command's."""
    listed = list(arguments)
    if "--" not in listed:
        return SplitArguments(listed, None)
    at = listed.index("--")
    return SplitArguments(listed[:at], listed[at + 1 :])


def traced_command(args: argparse.Namespace) -> list[str]:
    """The command to trace: what followed `--`, or (`trace CMD ARGS`, as strace takes it)
    the first argument that is not an option and everything after it."""
    after_dashes: list[str] | None = getattr(args, "after_dashes", None)
    if after_dashes is not None:
        return after_dashes
    return list(getattr(args, "argv", None) or [])
