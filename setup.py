"""Builds vaefast and its extension vaefast._C.

Sources are found by globbing csrc/, so adding an op never edits this file. A CppExtension is built where
there is no CUDA; a CUDAExtension when torch was built with CUDA and a CUDA toolkit is found, or when
FORCE_CUDA=1 (which fails with one line naming what is missing where it cannot be honoured). Where the
toolkit is and which GPU architectures to build for is decided by vaefast/cuda_toolkit.py (README, "On a
CUDA machine"). Install with `pip install --no-build-isolation .` after torch is in place (build isolation
would pull a different torch than the one the extension must match).
"""
import glob
import importlib.util
import os
import platform
import sys

from setuptools import find_packages, setup
import torch

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def load_cuda_toolkit():
    """vaefast/cuda_toolkit.py, loaded by path: importing the vaefast package would import its ops and the
    extension this script is about to build."""
    path = os.path.join(ROOT, "vaefast", "cuda_toolkit.py")
    spec = importlib.util.spec_from_file_location("vaefast_cuda_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


TOOLKIT, CUDA_SETTINGS, CUDA_ERROR = load_cuda_toolkit().cuda_build_plan(
    os.environ, torch.version.cuda, torch.cuda.device_count() if torch.version.cuda else 0)
if CUDA_ERROR:
    raise SystemExit(CUDA_ERROR)
# CUDA_HOME (and the default arch list where no GPU is visible) must be in the environment before torch's
# cpp_extension is imported: it reads CUDA_HOME once, at import.
os.environ.update(CUDA_SETTINGS)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cpu_has_avx2():
    """True when the build machine's CPU has AVX2 and FMA (the extension is built for the machine it is
    installed on, like -march=native; VAEFAST_CPU_CAPABILITY=DEFAULT builds a portable binary)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def extension():
    with_cuda = TOOLKIT is not None
    if with_cuda:
        arches = os.environ.get("TORCH_CUDA_ARCH_LIST", "those of the visible GPUs")
        print(f"vaefast: CUDA build with the toolkit in {TOOLKIT.home} (found by {TOOLKIT.found_by}), "
              f"architectures {arches}", file=sys.stderr)
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    sources = [s for s in sources if os.sep + "tests" + os.sep not in s]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))

    capability = os.environ.get("VAEFAST_CPU_CAPABILITY", "AVX2" if cpu_has_avx2() else "DEFAULT")
    # -fopenmp: at::parallel_for is an inline template that is serial unless the extension itself is
    # compiled with OpenMP (torch's own libgomp.so.1 is already loaded, so the runtime is shared).
    # -g0: Python's own CFLAGS add -g, which makes the build slower and the library 5x larger.
    cxx = ["-O3", "-g0", "-fno-math-errno", "-fopenmp"]
    if capability == "AVX2":
        # at::vec picks its AVX2 implementation (Sleef exp/log/sin/cos from libtorch) from these macros.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    elif capability != "DEFAULT":
        raise SystemExit(f"VAEFAST_CPU_CAPABILITY must be AVX2 or DEFAULT; got {capability!r}")
    defines = [
        f'-DVAEFAST_VERSION="{VERSION}"',
        f'-DVAEFAST_CPU_CAPABILITY="{capability}"',
        f'-DVAEFAST_CXX_FLAGS="{" ".join(cxx)}"',
    ]
    flags = {"cxx": cxx + defines}
    if with_cuda:
        flags["cxx"].append("-DVAEFAST_WITH_CUDA")
        flags["nvcc"] = ["-O3", "-DVAEFAST_WITH_CUDA", "-lineinfo"]
        return CUDAExtension("vaefast._C", sources, extra_compile_args=flags, extra_link_args=["-fopenmp"])
    return CppExtension("vaefast._C", sources, extra_compile_args=flags, extra_link_args=["-fopenmp"])


setup(
    name="vaefast",
    version=VERSION,
    description="Fused kernels and faithful models for training variational autoencoders in PyTorch",
    packages=find_packages(include=["vaefast", "vaefast.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "scipy", "scikit-learn", "tqdm", "matplotlib"],
    # experiments: experiments/robust_mnist.py and robust_synthetic.py compare against TensorLy's convex robust PCA.
    extras_require={"test": ["pytest", "hypothesis", "scipy", "numpy"], "experiments": ["tensorly"]},
    entry_points={"console_scripts": ["vaefast=vaefast.__main__:main"]},
)
