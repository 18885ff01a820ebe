"""Where the CUDA toolkit is, and which GPU architectures to build for: the one place that decides it, for
setup.py (which loads this file by path, before torch's cpp_extension reads CUDA_HOME) and for
`python -m vaefast.gpu_check`. Standard library only: importing it needs neither torch nor a GPU.

Two traps this avoids (measured with torch 2.14.1's CUDA build on a machine without a GPU):
- torch guesses the toolkit from the first `nvcc` on PATH; /usr/local/bin/nvcc is a wrapper script that
  execs /usr/local/cuda-13.0/bin/nvcc, so torch guessed /usr/local and the build died on `cuda.h: No such
  file or directory`. Here nvcc reports its own directory (`nvcc --dryrun` prints `_HERE_`).
- with no GPU visible and TORCH_CUDA_ARCH_LIST unset, torch's arch detection raised IndexError. Here a
  default list is chosen instead: sm_80 (A100) and sm_90 (H100) machine code plus compute_90 PTX, which
  the driver compiles for newer GPUs.
"""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
FALLBACK_HOME = "/usr/local/cuda"


@dataclass(frozen=True)
class Toolkit:
    home: str      # the directory holding bin/nvcc and include/cuda.h
    nvcc: str      # home/bin/nvcc
    found_by: str  # which rule found it, for logs


def _usable(home):
    return os.path.isfile(os.path.join(home, "include", "cuda.h")) and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def nvcc_home(nvcc):
    """The toolkit directory of an nvcc executable, following symlinks and wrapper scripts: nvcc names its
    own bin directory in a dry run (`#$ _HERE_=...`); where that fails, the symlink-resolved path."""
    try:
        dry_run = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ _HERE_=(.+)$", dry_run.stderr + dry_run.stdout, re.MULTILINE)
    except (OSError, subprocess.SubprocessError):
        match = None
    bin_dir = match.group(1).strip() if match else os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(os.path.realpath(bin_dir))


def find_toolkit(environ=None):
    """(Toolkit, []) for the first usable place of: $CUDA_HOME (if it holds include/cuda.h), the real location
    of the `nvcc` on PATH, /usr/local/cuda; or (None, [why each place was rejected])."""
    environ = os.environ if environ is None else environ
    rejected = []
    cuda_home = environ.get("CUDA_HOME")
    if cuda_home:
        if _usable(cuda_home):
            return Toolkit(cuda_home, os.path.join(cuda_home, "bin", "nvcc"), "CUDA_HOME"), []
        rejected.append(f"CUDA_HOME={cuda_home} has no include/cuda.h and bin/nvcc")
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc:
        home = nvcc_home(nvcc)
        if _usable(home):
            return Toolkit(home, os.path.join(home, "bin", "nvcc"), f"nvcc on PATH ({nvcc})"), []
        rejected.append(f"nvcc on PATH ({nvcc}) lives in {home}, which has no include/cuda.h")
    else:
        rejected.append("no nvcc on PATH")
    if _usable(FALLBACK_HOME):
        return Toolkit(FALLBACK_HOME, os.path.join(FALLBACK_HOME, "bin", "nvcc"), FALLBACK_HOME), []
    rejected.append(f"{FALLBACK_HOME} has no include/cuda.h")
    return None, rejected


def arch_list(environ, gpu_count):
    """TORCH_CUDA_ARCH_LIST as given; else None where a GPU is visible (torch builds for the GPUs it sees);
    else DEFAULT_ARCH_LIST."""
    given = environ.get("TORCH_CUDA_ARCH_LIST")
    if given:
        return given
    return None if gpu_count > 0 else DEFAULT_ARCH_LIST


def cuda_build_plan(environ, torch_cuda_version, gpu_count):
    """Whether setup.py builds the CUDA extension, and the environment it needs for that.

    Returns (toolkit or None, {variable: value} to set, error or None). The CUDA extension is built when torch
    has CUDA and a toolkit is found, or when FORCE_CUDA=1; with FORCE_CUDA=1 and either missing, the error is
    one line naming what is missing."""
    forced = environ.get("FORCE_CUDA") == "1"
    toolkit, rejected = find_toolkit(environ)
    if torch_cuda_version is None or toolkit is None:
        if not forced:
            return None, {}, None
        missing = []
        if torch_cuda_version is None:
            missing.append("the installed torch was built without CUDA (install a CUDA build, e.g. torch==2.14.1)")
        if toolkit is None:
            missing.append("no CUDA toolkit: " + "; ".join(rejected))
        return None, {}, "FORCE_CUDA=1 cannot be honoured: " + "; ".join(missing)
    settings = {"CUDA_HOME": toolkit.home}
    arches = arch_list(environ, gpu_count)
    if arches is not None:
        settings["TORCH_CUDA_ARCH_LIST"] = arches
    return toolkit, settings, None


if __name__ == "__main__":
    # `python vaefast/cuda_toolkit.py`: says where the toolkit is (exit 0) or where it looked (exit 1).
    import sys

    found, why_not = find_toolkit()
    if found is None:
        print("no CUDA toolkit: " + "; ".join(why_not))
        sys.exit(1)
    print(f"CUDA toolkit: {found.home} (found by {found.found_by})")
