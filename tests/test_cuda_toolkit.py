"""vaefast/cuda_toolkit.py, the toolkit and architecture choice of setup.py and vaefast.gpu_check, on fake
toolkits in a temporary folder: CUDA_HOME when it holds cuda.h, else nvcc's real location through wrapper
scripts and symlinks, else /usr/local/cuda; the default architectures with no GPU visible; and FORCE_CUDA=1's
one-line error, from setup.py itself."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaefast import cuda_toolkit

ROOT = Path(__file__).resolve().parents[1]


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root, reports_home=True):
    """root/include/cuda.h and root/bin/nvcc; like the real nvcc, a dry run names nvcc's own directory."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda.h").write_text("/* fake */\n")
    body = 'echo "#\\$ _HERE_=$(dirname "$(readlink -f "$0")")" >&2\n' if reports_home else "exit 1\n"
    executable(root / "bin" / "nvcc", "#!/bin/sh\n" + body)
    return root


@pytest.fixture
def no_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda_toolkit, "FALLBACK_HOME", str(tmp_path / "no-usr-local-cuda"))


def test_cuda_home_with_cuda_h_comes_first(tmp_path, no_fallback):
    home = fake_toolkit(tmp_path / "home")
    other = fake_toolkit(tmp_path / "other")
    toolkit, rejected = cuda_toolkit.find_toolkit({"CUDA_HOME": str(home), "PATH": str(other / "bin")})
    assert toolkit == cuda_toolkit.Toolkit(str(home), str(home / "bin" / "nvcc"), "CUDA_HOME") and rejected == []


def test_a_wrapper_script_on_path_leads_to_the_real_toolkit(tmp_path, no_fallback):
    """The measured trap: /usr/local/bin/nvcc is a script exec'ing /usr/local/cuda-13.0/bin/nvcc, and the
    wrapper's own parent (/usr/local) has no include/cuda.h. A CUDA_HOME without cuda.h is passed over."""
    real = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = executable(tmp_path / "local" / "bin" / "nvcc", f'#!/bin/sh\nexec {real / "bin" / "nvcc"} "$@"\n')
    toolkit, _ = cuda_toolkit.find_toolkit({"CUDA_HOME": str(tmp_path / "local"), "PATH": str(wrapper.parent)})
    assert toolkit.home == str(real) and toolkit.nvcc == str(real / "bin" / "nvcc")
    assert str(wrapper) in toolkit.found_by


def test_a_symlinked_nvcc_that_names_no_home_is_resolved(tmp_path, no_fallback):
    real = fake_toolkit(tmp_path / "cuda-12.9", reports_home=False)
    (tmp_path / "links").mkdir()
    os.symlink(real / "bin" / "nvcc", tmp_path / "links" / "nvcc")
    toolkit, _ = cuda_toolkit.find_toolkit({"PATH": str(tmp_path / "links")})
    assert toolkit.home == str(real)


def test_fallback_and_nothing_found(tmp_path, monkeypatch):
    empty_path = str(tmp_path / "empty")
    monkeypatch.setattr(cuda_toolkit, "FALLBACK_HOME", str(fake_toolkit(tmp_path / "usr-local-cuda")))
    toolkit, _ = cuda_toolkit.find_toolkit({"PATH": empty_path})
    assert toolkit.home == cuda_toolkit.FALLBACK_HOME and toolkit.found_by == cuda_toolkit.FALLBACK_HOME

    monkeypatch.setattr(cuda_toolkit, "FALLBACK_HOME", str(tmp_path / "nowhere"))
    toolkit, rejected = cuda_toolkit.find_toolkit({"CUDA_HOME": str(tmp_path / "bad"), "PATH": empty_path})
    assert toolkit is None
    assert rejected == [f"CUDA_HOME={tmp_path / 'bad'} has no include/cuda.h and bin/nvcc", "no nvcc on PATH",
                        f"{tmp_path / 'nowhere'} has no include/cuda.h"]


def test_default_architectures_only_where_no_gpu_is_visible():
    assert cuda_toolkit.arch_list({}, gpu_count=0) == "8.0;9.0+PTX"
    assert cuda_toolkit.arch_list({}, gpu_count=1) is None  # torch builds for the GPU it sees
    assert cuda_toolkit.arch_list({"TORCH_CUDA_ARCH_LIST": "9.0a"}, gpu_count=0) == "9.0a"


def test_build_plan(tmp_path, no_fallback):
    home = fake_toolkit(tmp_path / "cuda")
    found = {"PATH": str(home / "bin")}
    toolkit, settings, error = cuda_toolkit.cuda_build_plan(found, "13.0", gpu_count=0)
    assert toolkit.home == str(home) and error is None
    assert settings == {"CUDA_HOME": str(home), "TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX"}
    assert cuda_toolkit.cuda_build_plan(found, "13.0", gpu_count=2)[1] == {"CUDA_HOME": str(home)}
    # Without FORCE_CUDA a missing piece means a CPU build, silently; with it, one line naming each piece.
    nothing = {"PATH": str(tmp_path / "empty")}
    assert cuda_toolkit.cuda_build_plan(found, None, 0) == (None, {}, None)
    assert cuda_toolkit.cuda_build_plan(nothing, "13.0", 0) == (None, {}, None)
    _, _, error = cuda_toolkit.cuda_build_plan({**nothing, "FORCE_CUDA": "1"}, None, 0)
    assert error.startswith("FORCE_CUDA=1 cannot be honoured: the installed torch was built without CUDA")
    assert "no CUDA toolkit: no nvcc on PATH" in error and "\n" not in error
    _, _, error = cuda_toolkit.cuda_build_plan({**found, "FORCE_CUDA": "1"}, None, 0)
    assert "without CUDA" in error and "toolkit" not in error


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a torch built without CUDA")
def test_setup_py_refuses_force_cuda_in_one_line():
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, FORCE_CUDA="1"), timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("FORCE_CUDA=1 cannot be honoured: the installed torch was built without CUDA"), result.stderr
    assert "Traceback" not in result.stderr
