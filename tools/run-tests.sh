#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (Python deps, QEMU), then
# runs the linters and the whole suite. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# QEMU: the conformance references are recorded from it; strace: the differential tests and
# benchmarks compare against it; chromium and its driver: the HTML report is tested in a real
# browser (Selenium drives Debian's chromium through Debian's chromedriver).
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A virtual environment inside the checkout: the suite runs against this tree's code, whatever
# else the machine's Python has installed.
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
export PATH="$PWD/.venv/bin:$PATH"

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
python -m pytest "$@"
