// libFuzzer target: the profile loader. The input is tried both as a whole
// profile file (ProfileFile: CRC-checked wrapper) and as the Profile message
// inside it, which is what a file with a valid checksum can carry.
#include <cstddef>
#include <cstdint>
#include <string>

#include "planner/profile_io.h"
#include "ropekv/v1/profile.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)ropekv::planner::ProfileFromFileBytes(bytes, "fuzz");
  ropekv::v1::Profile proto;
  if (proto.ParseFromString(bytes)) (void)ropekv::planner::ProfileFromProto(proto);
  return 0;
}
