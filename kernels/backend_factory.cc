// kernels::CreateBackend: backend and device selection.
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#ifdef ROPEKV_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace ropekv::kernels {

absl::StatusOr<CreatedBackend> CreateBackend(const BackendOptions& o) {
  if (o.kind != "auto" && o.kind != "cpu" && o.kind != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("backend: expected auto, cpu or cuda, got '", o.kind, "'"));
  }
  if (o.cpu_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_threads: expected >= 0, got ", o.cpu_threads));
  }
  CreatedBackend out;
#ifdef ROPEKV_WITH_CUDA
  if (o.kind == "cuda" || (o.kind == "auto" && CudaDeviceCount() > o.cuda_device)) {
    absl::StatusOr<std::unique_ptr<Backend>> cuda =
        CreateCudaBackend({.device = o.cuda_device, .streams = o.cuda_streams});
    if (!cuda.ok()) return cuda.status();
    out.backend = *std::move(cuda);
    out.device = absl::StrCat("CUDA device ", o.cuda_device, " (", CudaDeviceDescription(o.cuda_device), ")");
    return out;
  }
#else
  if (o.kind == "cuda") {
    return absl::UnavailableError("backend cuda: this build has no CUDA backend (ROPEKV_CUDA=OFF)");
  }
#endif
  out.backend = CreateCpuBackend({.num_threads = o.cpu_threads});
  out.device = "host CPU";
  return out;
}

}  // namespace ropekv::kernels
