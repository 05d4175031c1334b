"""What several commands parse alike: the traced command after `--`, and the project's
configuration (its scenarios, snapshot directory and lint settings)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from conformance.gate.project import Project, load_project
from conformance.lint import LintConfig


def command_after_dashes(remainder: Sequence[str]) -> list[str]:
    """The command to trace from argparse.REMAINDER: `-- CMD ARGS` without its `--` (argparse
    keeps it), or `CMD ARGS` as given."""
    return list(remainder[1:] if remainder[:1] == ["--"] else remainder)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="the project's configuration: a kvm-conformance.toml, or a pyproject.toml's "
        "[tool.kvm-conformance] (default: the nearest of either from the current directory up)",
    )


def project(args: argparse.Namespace) -> Project:
    """The project `--config` names, else the nearest configuration's."""
    explicit: Path | None = args.config
    return load_project(explicit, Path.cwd())


def lint_config(args: argparse.Namespace) -> LintConfig:
    return project(args).lint
