#!/usr/bin/env bash
# Shows that the emulator tests can fail: plants known bugs in csrc/cuda, one at a time, and expects the
# emulated-kernel tests to FAIL on each.
#
#   csrc/tests/cuda_emulator/mutation_check.sh
#
# Works on a copy of CMakeLists.txt and csrc/ in a temporary directory (the checkout is never touched):
# builds vaefast_cuda_emulator_tests there, checks that it passes unmutated, then for each mutant replaces
# one literal piece of source text (the check stops if the text is gone: the mutants must follow the
# sources), rebuilds, runs the tests that exercise it, and restores the file. Prints one line per mutant and
# exits nonzero if the baseline fails or any mutant survives. torch is found through $PYTHON (default
# `python`), as in run_ctest.sh. About 5 minutes of CPU (17 of wall time on a busy 2-core machine): a
# mutant in cuda_common.cuh recompiles every test file.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
python="${PYTHON:-python}"
python_path="$(command -v "$python")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$repo_root/CMakeLists.txt" "$repo_root/csrc" "$work/"
build="$work/build"
cmake -S "$work" -B "$build" -DPython_EXECUTABLE="$python_path" -DVAEFAST_CUDA_CHECK=OFF >"$work/configure.log" 2>&1

build_and_test() {  # filter: the tests to run (a name substring)
  cmake --build "$build" --target vaefast_cuda_emulator_tests -j2 >"$work/build.log" 2>&1 || return 2
  "$build/vaefast_cuda_emulator_tests" "$1" >"$work/test.log" 2>&1
}

if ! build_and_test emulated; then
  echo "baseline FAILED: the unmutated emulator tests must pass first" >&2
  tail -20 "$work/build.log" "$work/test.log" >&2
  exit 1
fi
echo "baseline: the emulated-kernel tests pass"

survivors=0
# mutant <name> <file under csrc/cuda> <tests to run> <python literal: text> <python literal: replacement>
mutant() {
  local name="$1" file="$work/csrc/cuda/$2" filter="$3" search="$4" replace="$5"
  cp "$file" "$work/original"
  "$python_path" - "$file" "$search" "$replace" <<'EOF'
import ast, sys
path, search, replace = sys.argv[1], ast.literal_eval(sys.argv[2]), ast.literal_eval(sys.argv[3])
text = open(path).read()
if text.count(search) != 1:
    sys.exit(f"mutation text found {text.count(search)} times in {path} (expected once): {search!r}")
open(path, "w").write(text.replace(search, replace))
EOF
  local status=0
  build_and_test "$filter" || status=$?
  local failures
  failures="$(grep -c 'FAILED' "$work/test.log" || true)"
  if [[ $status -eq 2 ]]; then
    echo "mutant $name: did not compile (not a test of the tests)"
    survivors=$((survivors + 1))
  elif [[ $status -ne 0 ]]; then
    echo "mutant $name: FAILS the tests as it should ($failures failed checks or tests; first: $(grep -m1 'FAILED' "$work/test.log" | cut -c1-160))"
  else
    echo "mutant $name: SURVIVED (the tests passed)"
    survivors=$((survivors + 1))
  fi
  cp "$work/original" "$file"
}

mutant "block_sum without the barrier between the warp sums and warp 0's read" cuda_common.cuh kernel_sum_float \
  "'  if (lane == 0) shared[warp] = v;\n  __syncthreads();\n'" "'  if (lane == 0) shared[warp] = v;\n'"
mutant "warp_sum's butterfly starting at offset 8 instead of 16" cuda_common.cuh gaussian_kl_float \
  "'for (int delta = kWarp / 2; delta > 0; delta /= 2)'" "'for (int delta = kWarp / 4; delta > 0; delta /= 2)'"
mutant "kernel_sum_kernel restaging a feature chunk without waiting for the readers" mmd_cuda.cu kernel_sum_float \
  "'    for (int64_t k0 = 0; k0 < p.d; k0 += kForwardChunk) {\n      __syncthreads();\n'" \
  "'    for (int64_t k0 = 0; k0 < p.d; k0 += kForwardChunk) {\n'"
mutant "MMD tiles under-counted (rows / 64, dropping a partial tile)" mmd_cuda.cu kernel_sum_float \
  "'return (rows + kTile - 1) / kTile;'" "'return rows / kTile;'"
mutant "row gradients without the opt-in above 48 KB of dynamic shared memory" mmd_cuda.cu kernel_sum_float \
  "'static_cast<int>(shared));'" "'static_cast<int>(48 * 1024));'"

if [[ $survivors -ne 0 ]]; then
  echo "$survivors mutant(s) survived" >&2
  exit 1
fi
echo "every mutant fails the emulator tests"
