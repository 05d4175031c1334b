"""What several commands parse alike: the traced command after `--`, and the lint settings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `trace` parses its command here and must not load the rules (~30-60 ms)
    from conformance.lint import LintConfig


def command_after_dashes(remainder: Sequence[str]) -> list[str]:
    """The command to trace from argparse.REMAINDER: `-- CMD ARGS` without its `--` (argparse
    keeps it), or `CMD ARGS` as given."""
    return list(remainder[1:] if remainder[:1] == ["--"] else remainder)


def add_lint_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PYPROJECT",
        type=Path,
        help="read [tool.kvm-conformance] from this file (default: the nearest pyproject.toml "
        "from the current directory up)",
    )


def lint_config(args: argparse.Namespace) -> LintConfig:
    """The settings `--config` names, else the nearest pyproject.toml's."""
    from conformance.lint import project_config  # noqa: PLC0415 - see the import above

    explicit: Path | None = args.config
    return project_config(explicit, Path.cwd())
