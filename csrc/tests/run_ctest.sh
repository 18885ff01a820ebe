#!/usr/bin/env bash
# Configures, builds and runs the C++ tests (CMakeLists.txt at the repository root) in one build directory.
#
#   csrc/tests/run_ctest.sh [build-dir]      (default build/cmake, relative to the repository root)
#
# torch is found through the Python interpreter in $PYTHON (default: `python`). Exits 0 with "skipped: cmake
# not found" where cmake is missing, so a test command can always call it; otherwise exits with ctest's
# status. Extra ctest arguments go in $CTEST_ARGS (e.g. CTEST_ARGS=--verbose to see every test's output).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build_dir="${1:-build/cmake}"
python="${PYTHON:-python}"

if ! command -v cmake >/dev/null 2>&1; then
  echo "skipped: cmake not found"
  exit 0
fi
if ! python_path="$(command -v "$python")"; then
  echo "error: Python interpreter '$python' not found; set PYTHON to one with torch installed" >&2
  exit 1
fi

cd "$repo_root"
cmake -S . -B "$build_dir" -DPython_EXECUTABLE="$python_path"
cmake --build "$build_dir" -j2
# shellcheck disable=SC2086  # CTEST_ARGS is a list of words on purpose
ctest --test-dir "$build_dir" --output-on-failure ${CTEST_ARGS:-}
