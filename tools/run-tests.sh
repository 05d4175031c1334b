#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (Python deps, QEMU), then
# runs the linters and the whole suite. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "installing qemu-system-x86 (the conformance references are recorded from QEMU)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'

ruff check .
ruff format --check .
mypy
lint-imports

# On a machine with /dev/kvm every resource a test can ask for is installed above, so a skip
# means a broken setup: tests/conftest.py turns skips into a failure under this variable.
if [ -e /dev/kvm ]; then
    export KVM_CONFORMANCE_FORBID_SKIPS=1
fi
# pytest exits 5 when no test ran, which fails this script as it should.
python3 -m pytest "$@"
