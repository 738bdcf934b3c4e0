#!/usr/bin/env bash
# The whole test suite on a fresh clone: venv, install, the C core's tests (ctest under
# AddressSanitizer + UBSan, again under valgrind and under ThreadSanitizer, then each
# libFuzzer harness briefly on its seed corpus), then pytest against the installed wheel.
# Tools missing on a fresh machine are installed (Debian packages, as root); a tool is
# skipped, saying so, only when it cannot be installed. PYCLUSTERC_FUZZ_SECONDS sets how
# long each fuzzer runs (default 45; docs/fuzzing.md has longer runs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[test]"

# ---- C core ------------------------------------------------------------------------------
apt_updated=0
# need COMMAND PACKAGE...: true when COMMAND exists, installing the packages if needed.
need() {
  local cmd=$1
  shift
  command -v "$cmd" > /dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    if [ "$apt_updated" = 0 ]; then
      apt-get update -qq > /dev/null 2>&1 || true
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null 2>&1 || true
  fi
  command -v "$cmd" > /dev/null 2>&1
}

echo "== C tests under AddressSanitizer + UBSan"
cmake -S . -B build/ctest -DPYCLUSTERC_BUILD_TESTS=ON -DPYCLUSTERC_WERROR=ON \
      -DPYCLUSTERC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
cmake --build build/ctest -j 2
ctest --test-dir build/ctest --output-on-failure

if need valgrind valgrind; then
  echo "== C tests under valgrind (--error-exitcode=1)"
  cmake -S . -B build/valgrind -DPYCLUSTERC_BUILD_TESTS=ON -DPYCLUSTERC_WERROR=ON \
        -DPYCLUSTERC_VALGRIND=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
  cmake --build build/valgrind -j 2
  ctest --test-dir build/valgrind --output-on-failure
else
  echo "== SKIPPED: C tests under valgrind: valgrind is not installed and cannot be installed here"
fi

echo "== C tests under ThreadSanitizer (the threaded cases stand in for processes)"
cmake -S . -B build/tsan -DPYCLUSTERC_BUILD_TESTS=ON -DPYCLUSTERC_WERROR=ON \
      -DPYCLUSTERC_TSAN=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
cmake --build build/tsan -j 2
TSAN_OPTIONS="halt_on_error=1 exitcode=66 ${TSAN_OPTIONS:-}" ctest --test-dir build/tsan --output-on-failure

fuzz_ok=0
if need clang clang libclang-rt-dev; then
  # clang alone is not enough: libFuzzer comes with compiler-rt.
  probe=$(mktemp -d)
  printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
    > "$probe/probe.c"
  if clang -fsanitize=fuzzer "$probe/probe.c" -o "$probe/probe" > /dev/null 2>&1; then
    fuzz_ok=1
  fi
  rm -rf "$probe"
fi
if [ "$fuzz_ok" = 1 ]; then
  seconds=${PYCLUSTERC_FUZZ_SECONDS:-45}
  CC=clang cmake -S . -B build/fuzz -DPYCLUSTERC_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
  cmake --build build/fuzz -j 2
  for harness in build/fuzz/tests/fuzz/fuzz_*; do
    name=$(basename "$harness")
    echo "== fuzzing $name for ${seconds} s (seeds: tests/fuzz/corpus/$name)"
    # New inputs go to the build tree's corpus, never into the committed seeds.
    mkdir -p "build/fuzz/corpus/$name"
    rm -f "build/fuzz/$name-"*
    "$harness" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" \
      "build/fuzz/corpus/$name" "tests/fuzz/corpus/$name" 2>&1 | tail -n 12
    # tail hides the harness's exit status: a crash leaves an artifact behind.
    if ls "build/fuzz/$name-"* > /dev/null 2>&1; then
      echo "fuzzer $name found a failing input: $(ls "build/fuzz/$name-"*)" >&2
      exit 1
    fi
  done
else
  echo "== SKIPPED: libFuzzer harnesses: clang with libFuzzer (compiler-rt) cannot be installed here"
fi

.venv/bin/python -m pytest -q "$@"
