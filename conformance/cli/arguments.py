"""What several commands parse alike: the traced command after `--`. Kept free of imports:
`trace` loads this module, and its start-up is measured (tests/integration/test_cli.py)."""

from __future__ import annotations

from collections.abc import Sequence


def command_after_dashes(remainder: Sequence[str]) -> list[str]:
    """The command to trace from argparse.REMAINDER: `-- CMD ARGS` without its `--` (argparse
    keeps it), or `CMD ARGS` as given."""
    return list(remainder[1:] if remainder[:1] == ["--"] else remainder)
