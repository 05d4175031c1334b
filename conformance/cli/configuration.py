"""The project's configuration as commands take it: `--config FILE`, else the nearest one
(its scenarios, snapshot directory and lint settings: gate/project.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from conformance.gate.project import Project, load_project
from conformance.lint import LintConfig


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
