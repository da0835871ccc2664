// libFuzzer target: what the service does with untrusted request fields
// before any work: wire tensors of arbitrary dtype, shape and size decoded
// against the shape patterns of Append and Attend, and profile specs'
// geometry and budget validated.
#include <cstddef>
#include <cstdint>
#include <string>

#include "planner/profile_io.h"
#include "proto/tensor_util.h"
#include "ropekv/v1/service.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ropekv::v1::AttendItem item;
  if (item.ParseFromString(bytes)) {
    (void)ropekv::proto::TensorToFloats(item.queries(), {8, -1, 64}, "queries");
    (void)ropekv::proto::TensorToFloats(item.queries(), {-1}, "queries");
  }
  ropekv::v1::AppendRequest append;
  if (append.ParseFromString(bytes)) {
    (void)ropekv::proto::TensorToFloats(append.keys(), {2, -1, 64}, "keys");
    (void)ropekv::proto::TensorToFloats(append.values(), {2, -1, 64}, "values");
  }
  ropekv::v1::ProfileSpec spec;
  if (spec.ParseFromString(bytes)) {
    (void)ropekv::planner::GeometryFromProto(spec.geometry());
    (void)ropekv::planner::BudgetFromProto(spec.budget(), true);
  }
  return 0;
}
