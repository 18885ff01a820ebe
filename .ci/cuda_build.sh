#!/usr/bin/env bash
# CI's CUDA build stage, the last part of the README's test command: builds the real CUDA extension on a
# machine without a GPU and checks what can be checked there (issue 16).
#
#   bash .ci/cuda_build.sh
#
# 1. A venv of its own (.venv-cuda/, reused when it already holds the same packages; $VAEFAST_CUDA_VENV moves
#    it) with torch==2.14.1, the CUDA 13.0 build that matches nvcc 13.0 (5.8 GB, ~2 min from local disk).
# 2. The CUDA extension built out of the source tree, into build/cuda/ (objects in build/cuda/temp, kept for
#    the next run; the package with its .so in build/cuda/tree), so the CPU venv's in-tree vaefast/_C*.so
#    is untouched. FORCE_CUDA=1, MAX_JOBS=${MAX_JOBS:-2}; the toolkit and the default architectures (sm_80,
#    sm_90, compute_90 PTX: no GPU is visible) come from vaefast/cuda_toolkit.py, as for every build.
# 3. The smoke check (.ci/cuda_smoke_check.py): imports, cuda kernels for every op in backend_info() and in
#    the dispatcher, sm_80 and sm_90 cubins.
# 4. The Python op tests in that environment, against that build (tests/test_cuda.py skips: no GPU); the
#    hypothesis "dev" profile, as the CPU stage already ran the full one.
# Where nvcc or that torch is missing it says why and exits 0 ("CUDA build stage skipped: ...").
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="${VAEFAST_CUDA_VENV:-$repo_root/.venv-cuda}"
packages=(torch==2.14.1 ninja wheel setuptools pytest hypothesis numpy scipy)
build_dir="$repo_root/build/cuda"
stage_start=$SECONDS

skip() {
  echo "CUDA build stage skipped: $1"
  exit 0
}
phase() {
  echo "== CUDA build stage: $1 ($((SECONDS - stage_start)) s)"
}

phase "toolkit"
if ! python3 vaefast/cuda_toolkit.py; then
  skip "no CUDA toolkit (above: where it looked)"
fi

phase "venv $venv"
marker="$venv/.vaefast-cuda-packages"
if [[ ! -f "$marker" || "$(cat "$marker")" != "${packages[*]}" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! pip_log="$("$venv/bin/pip" install -q "${packages[@]}" 2>&1)"; then
    echo "$pip_log" | tail -n 5
    rm -rf "$venv"
    skip "could not install ${packages[*]} (pip's last lines above)"
  fi
  echo "${packages[*]}" >"$marker"
fi
python="$venv/bin/python"
if ! "$python" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  skip "the torch in $venv has no CUDA"
fi

phase "build (MAX_JOBS=${MAX_JOBS:-2})"
# The package's Python files beside the new .so: a tree of its own, so that imports cannot reach the in-tree
# CPU build. Stale copies go first (a deleted module must not linger).
rm -rf "$build_dir/tree"
mkdir -p "$build_dir/tree"
tar -C "$repo_root" --exclude='*.so' --exclude=__pycache__ -cf - vaefast tests | tar -C "$build_dir/tree" -xf -
FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" "$python" setup.py -q build_ext --build-temp "$build_dir/temp" \
  --build-lib "$build_dir/tree" || true
if ! compgen -G "$build_dir/tree/vaefast/_C*.so" >/dev/null; then
  echo "CUDA build stage FAILED: no extension in $build_dir/tree/vaefast (build output above)" >&2
  exit 1
fi

phase "smoke check"
PYTHONPATH="$build_dir/tree" "$python" .ci/cuda_smoke_check.py "$build_dir/tree"

phase "op tests against the CUDA build"
cd "$build_dir/tree"
HYPOTHESIS_PROFILE=dev VAEFAST_BACKEND=compiled "$python" -m pytest -q -p no:cacheprovider \
  tests/test_reparameterize.py tests/test_gaussian_kl.py tests/test_gaussian_nll.py tests/test_reparameterize_kl.py \
  tests/test_mmd.py tests/test_cuda.py
phase "done"
