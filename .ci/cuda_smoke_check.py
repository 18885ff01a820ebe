"""The smoke check of CI's CUDA build stage (.ci/cuda_build.sh), run by the CUDA torch's Python on a machine
without a GPU, with the freshly built tree first on PYTHONPATH:

- vaefast imports, and from that tree, with its compiled extension (VAEFAST_BACKEND=compiled);
- backend_info() lists cuda for every op, and the dispatcher holds a CUDA kernel for every vaefast:: op it
  knows (not only those vaefast._backend names, so an op registered for the CPU alone cannot slip by);
- the extension holds sm_80 and sm_90 machine code for every CUDA source, and compute_90 PTX
  (cuobjdump --list-elf / --list-ptx; cuobjdump is taken from the toolkit or from triton's package).

    python .ci/cuda_smoke_check.py EXPECTED_TREE
Exits 1 with the failures listed.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import torch

ARCHES = ("sm_80", "sm_90")
PTX = "compute_90"


def find_cuobjdump():
    import triton

    shipped = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    candidates = [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                                          "cuobjdump"), shipped]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def main(expected_tree):
    failures = []
    os.environ["VAEFAST_BACKEND"] = "compiled"
    import vaefast
    from vaefast import _backend

    package_dir = os.path.dirname(os.path.realpath(vaefast.__file__))
    library = os.path.realpath(_backend._C.__file__)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vaefast from {package_dir}")
    print(f"extension: {library} ({os.path.getsize(library) / 2**20:.1f} MiB)")
    if not package_dir.startswith(os.path.realpath(expected_tree) + os.sep):
        failures.append(f"vaefast was imported from {package_dir}, not from the CUDA build in {expected_tree}")

    ops = vaefast.backend_info()["ops"]
    without_cuda = sorted(op for op, devices in ops.items() if "cuda" not in devices)
    print(f"backend_info: {len(ops)} public ops, cuda for {len(ops) - len(without_cuda)}")
    if without_cuda:
        failures.append("backend_info() lists no cuda kernel for " + ", ".join(without_cuda))

    registered = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("vaefast::"))
    no_kernel = [name for name in registered if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]
    print(f"dispatcher: {len(registered)} vaefast:: ops, a CUDA kernel for {len(registered) - len(no_kernel)}")
    unnamed = sorted(set(name.split("::")[1] for name in registered) - set(_backend.OPS))
    if not registered:
        failures.append("the dispatcher knows no vaefast:: op")
    if no_kernel:
        failures.append("no CUDA kernel in the dispatcher for " + ", ".join(no_kernel))
    if unnamed:
        failures.append("ops registered but missing from vaefast._backend.OPS: " + ", ".join(unnamed))

    cuobjdump = find_cuobjdump()
    sources = len(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc",
                                         "**", "*.cu"), recursive=True))
    if cuobjdump is None:
        failures.append("cuobjdump not found (toolkit bin/, PATH, triton/backends/nvidia/bin)")
    else:
        elf = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True).stdout
        ptx = subprocess.run([cuobjdump, "--list-ptx", library], capture_output=True, text=True).stdout
        counts = {arch: len(re.findall(rf"\.{arch}\.cubin", elf)) for arch in ARCHES}
        ptx_count = len(re.findall(rf"\.{PTX}\.ptx|\.sm_90\.ptx", ptx))
        print(f"cubins ({cuobjdump}): " + ", ".join(f"{arch} x{count}" for arch, count in counts.items())
              + f"; PTX x{ptx_count}; {sources} .cu sources")
        for arch, count in counts.items():
            if count < sources:
                failures.append(f"{count} {arch} cubins for {sources} CUDA sources")
        if ptx_count < sources:
            failures.append(f"{ptx_count} PTX entries for {sources} CUDA sources (expected {PTX} PTX for each)")

    for failure in failures:
        print(f"FAILED: {failure}")
    print("smoke check: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
