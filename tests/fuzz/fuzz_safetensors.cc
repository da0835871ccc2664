// libFuzzer target: the .safetensors reader and the activation-file
// helpers on arbitrary bytes. Every input must give a value or a clear
// status; nothing may crash, read out of bounds or overflow.
#include <cstddef>
#include <cstdint>
#include <string>

#include "planner/calibration.h"
#include "planner/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ropekv::planner;
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(std::string(reinterpret_cast<const char*>(data), size));
  if (!f.ok()) return 0;
  for (const auto& [name, info] : f->tensors()) {
    if (name == "seq_offsets") {
      (void)f->ReadInt64(name);
    } else {
      (void)f->ReadFloat(name);
    }
  }
  absl::StatusOr<ModelGeometry> g = GeometryFromMetadata(*f);
  if (g.ok() && f->tensors().count("k") && f->tensors().at("k").shape.size() == 4) {
    (void)SequenceRanges(*f, f->tensors().at("k").shape[2]);
  }
  return 0;
}
