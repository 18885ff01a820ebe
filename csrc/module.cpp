// The Python extension module vaefast._C. Importing it registers the vaefast:: operators (each op's file
// in csrc/ops adds its schemas with TORCH_LIBRARY_FRAGMENT) and exposes how this binary was built.
#include <torch/extension.h>

#ifdef VAEFAST_WITH_CUDA
#include <cuda.h>  // CUDA_VERSION: torch/extension.h does not include the driver API header
#endif

#ifndef VAEFAST_VERSION
#define VAEFAST_VERSION "unknown"
#endif
#ifndef VAEFAST_CXX_FLAGS
#define VAEFAST_CXX_FLAGS ""
#endif
#ifndef VAEFAST_CPU_CAPABILITY
#define VAEFAST_CPU_CAPABILITY "DEFAULT"
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = VAEFAST_VERSION;
  pybind11::list devices;
  devices.append("cpu");
#ifdef VAEFAST_WITH_CUDA
  devices.append("cuda");
  info["cuda_version"] = std::to_string(CUDA_VERSION);
#else
  info["cuda_version"] = pybind11::none();
#endif
  info["devices"] = devices;
  info["cpu_capability"] = VAEFAST_CPU_CAPABILITY;
  info["cxx_flags"] = VAEFAST_CXX_FLAGS;
  info["torch_version"] = TORCH_VERSION;
  info["parallel"] = at::get_parallel_info();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vaefast's compiled kernels; use them through the vaefast package";
  m.def("build_info", &build_info, "How this extension was built: version, devices, flags");
}
