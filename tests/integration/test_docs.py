"""Every command shown in README.md and docs/ runs, as written, so that none of them rots.

Each Markdown file gets a scratch directory holding what its commands expect (the project's
expected/ and traces/qemu/, and `./my-vmm guest.bin`, played by the project's own VMM core
running its hello guest). Its code blocks are then taken in order:

- `sh`: each line is a command, run with `sh -c` there; it must exit 0, or the status its
  comment names (`# exit 1: ...`);
- a block right after `<!-- file: PATH -->` is written to PATH first (a pytest test, an
  allowances file, a pyproject.toml, a CI workflow), and is checked for what it is: Python
  compiles, allowances and lint settings load, a workflow's kvm-conformance steps run;
- `text` blocks are output shown to readers; test_report.py holds one of them to the real
  output.

Two commands are not run here, and the test says why: `bash tools/run-tests.sh` is what CI
(.ci/run) runs, the whole suite, this test included; and `python3 -m pip install .` is run as
`pip install --no-deps --no-build-isolation --target DIR .`, so that the commands after it use
that installed copy without fetching its dependencies again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conformance.compare.allowances import load_allowances
from conformance.lint import load_config

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<kind>\w*)\n(?P<body>.*?)```", re.S)
_COMMENT = re.compile(r"\s+#\s.*$")
_EXIT = re.compile(r"#\s*exit (\d+)")
_CI_ONLY = "bash tools/run-tests.sh"
_INSTALL = "python3 -m pip install ."
_SUDO = 'sudo -E env "PATH=$PATH" '
_INSTALLED: dict[str, Path] = {}  # the session's one `pip install .` (its --target directory)

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_qemu]


@dataclass(frozen=True)
class Block:
    kind: str
    body: str
    file: str | None


def blocks(document: Path) -> Iterator[Block]:
    for match in _FENCE.finditer(document.read_text(encoding="utf-8")):
        yield Block(match["kind"], match["body"], match["file"])


def commands(block: Block) -> Iterator[tuple[str, int]]:
    """(command, expected exit status) for each line of an `sh` block."""
    for line in block.body.splitlines():
        if not line.strip():
            continue
        status = _EXIT.search(line)
        yield _COMMENT.sub("", line).strip(), int(status.group(1)) if status else 0


class Sandbox:
    """A scratch directory set up as the docs assume, and the environment commands run in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO / "expected", root / "expected")
        shutil.copytree(REPO / "traces" / "qemu", root / "traces" / "qemu")
        vmm = root / "my-vmm"
        vmm.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m conformance run hello\n')
        vmm.chmod(0o755)
        (root / "guest.bin").write_bytes(b"\xf4")  # the stand-in VMM runs its own guest
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.env.pop("KVM_CONFORMANCE_FORBID_SKIPS", None)  # a reader's pytest, not CI's

    def run(self, command: str, status: int, where: str) -> subprocess.CompletedProcess[str]:
        if command.startswith(f"{_INSTALL} && "):  # the install, then what uses it
            self._install(where)
            command = command.removeprefix(f"{_INSTALL} && ")
        if command == _INSTALL:
            return self._install(where)
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == status, (
            f"{where}: `{command}` exited {result.returncode}, the docs say {status}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
        return result

    def _install(self, where: str) -> subprocess.CompletedProcess[str]:
        target = _INSTALLED.get("target")
        if target is not None:  # the same command in another document: installed once
            self._use(target)
            return subprocess.CompletedProcess([_INSTALL], 0, "", "")
        target = self.root / "installed"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(REPO)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{where}: {_INSTALL} failed:\n{result.stderr}"
        _INSTALLED["target"] = target
        self._use(target)
        return result

    def _use(self, target: Path) -> None:
        self.env["PATH"] = f"{target / 'bin'}:{self.env['PATH']}"
        self.env["PYTHONPATH"] = str(target)

    def write(self, block: Block) -> None:
        assert block.file is not None
        path = self.root / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.body, encoding="utf-8")
        if block.kind == "python":
            compile(block.body, str(path), "exec")
        elif block.kind == "toml":
            tomllib.loads(block.body)
            load_config(path)
        elif block.kind == "yaml" and "allow" in yaml.safe_load(block.body):
            load_allowances(path)


def _workflow_commands(block: Block) -> Iterator[str]:
    """The kvm-conformance, record-trace and install lines of a workflow's `run:` steps; the
    machine setup around them (apt, udev) is what tools/run-tests.sh does here."""
    workflow = yaml.safe_load(block.body)
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                command = line.strip().removeprefix(_SUDO)
                if command.startswith(("kvm-conformance ", "record-trace ", _INSTALL)):
                    yield command


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_command_shown_runs(document: Path, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    ran = 0
    for number, block in enumerate(blocks(document)):
        where = f"{document.name}, code block {number + 1}"
        if block.file is not None:
            sandbox.write(block)
            if block.file.startswith(".github/workflows/"):
                for command in _workflow_commands(block):
                    sandbox.run(command, 0, f"{where} (workflow)")
                    ran += 1
                sarif = json.loads((tmp_path / "kvm-conformance.sarif").read_text())
                assert sarif["version"] == "2.1.0" and (tmp_path / "kvm-conformance.html").exists()
        if block.kind != "sh":
            continue
        for command, status in commands(block):
            if command == _CI_ONLY:
                ci = (REPO / ".ci" / "run").read_text()
                assert "exec bash tools/run-tests.sh" in ci, "CI no longer runs it"
                continue
            sandbox.run(command, status, where)
            ran += 1
    assert ran or document.name in ("rules.md", "trace-format.md", "contracts.md"), (
        f"{document.name} shows no command: why is it in the list?"
    )


def test_the_docs_link_to_files_that_exist() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name}: {target}"
