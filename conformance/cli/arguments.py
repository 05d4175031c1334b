"""What several commands parse alike: the traced command after `--`, and the lint settings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from conformance.lint import LintConfig, project_config


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
    explicit: Path | None = args.config
    return project_config(explicit, Path.cwd())
