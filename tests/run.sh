#!/usr/bin/env bash
# The whole test suite on a fresh clone: venv, install, C unit tests (ctest, under
# AddressSanitizer + UBSan), then pytest against the installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[test]"
cmake -S . -B build/ctest -DPYCLUSTERC_BUILD_TESTS=ON -DPYCLUSTERC_WERROR=ON \
      -DPYCLUSTERC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
cmake --build build/ctest -j 2
ctest --test-dir build/ctest --output-on-failure
.venv/bin/python -m pytest -q "$@"
