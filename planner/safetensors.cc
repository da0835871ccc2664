#include "planner/safetensors.h"

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "planner/half.h"

namespace ropekv::planner {
namespace {

// A header larger than this is refused (the format's own reference limit).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

int DTypeSize(TensorDType t) {
  switch (t) {
    case TensorDType::kF16:
    case TensorDType::kBF16:
      return 2;
    case TensorDType::kF32:
    case TensorDType::kI32:
      return 4;
    case TensorDType::kF64:
    case TensorDType::kI64:
      return 8;
  }
  return 0;
}

bool ParseDType(const std::string& s, TensorDType* out) {
  static const std::pair<const char*, TensorDType> kNames[] = {
      {"F16", TensorDType::kF16}, {"BF16", TensorDType::kBF16},
      {"F32", TensorDType::kF32}, {"F64", TensorDType::kF64},
      {"I32", TensorDType::kI32}, {"I64", TensorDType::kI64}};
  for (const auto& [name, t] : kNames) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ",
                                            std::strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::StatusOr<SafetensorsFile> f = Parse(std::move(buffer).str());
  if (!f.ok()) {
    return absl::Status(f.status().code(),
                        absl::StrCat(path, ": ", f.status().message()));
  }
  return f;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string bytes) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat(
        "safetensors: expected an 8-byte header length, file has ",
        bytes.size(), " bytes"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: header length ", header_len, " exceeds ", kMaxHeaderBytes));
  }
  if (header_len > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(
        "safetensors: header length ", header_len, " but only ",
        bytes.size() - 8, " bytes follow (truncated file)"));
  }
  nlohmann::json header = nlohmann::json::parse(
      bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(header_len),
      /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError(
        "safetensors: header is not a JSON object");
  }
  SafetensorsFile f;
  f.data_offset_ = 8 + static_cast<int64_t>(header_len);
  const int64_t data_size = static_cast<int64_t>(bytes.size()) - f.data_offset_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        return absl::InvalidArgumentError(
            "safetensors: __metadata__ must be an object of strings");
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "safetensors: __metadata__.", m.key(), " must be a string"));
        }
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("safetensors: tensor '", name, "'");
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets") || !v["dtype"].is_string() ||
        !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": expected {dtype: string, shape: [ints], data_offsets: [begin, end]}"));
    }
    TensorInfo t;
    if (!ParseDType(v["dtype"].get<std::string>(), &t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": unsupported dtype '", v["dtype"].get<std::string>(),
          "' (expected F16, BF16, F32, F64, I32 or I64)"));
    }
    // Element count with overflow guard: no tensor is larger than the file.
    int64_t elements = 1;
    for (const nlohmann::json& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": shape entries must be integers >= 0"));
      }
      const int64_t dim = d.get<int64_t>();
      t.shape.push_back(dim);
      if (dim != 0 && elements > data_size / dim) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": shape ", ShapeString(t.shape),
                         " is larger than the file's data"));
      }
      elements *= dim;
    }
    for (const nlohmann::json& o : v["data_offsets"]) {
      if (!o.is_number_integer() || o.get<int64_t>() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": data_offsets must be integers >= 0"));
      }
    }
    t.begin = v["data_offsets"][0].get<int64_t>();
    t.end = v["data_offsets"][1].get<int64_t>();
    if (t.begin > t.end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets begin ", t.begin, " > end ", t.end));
    }
    if (t.end > data_size) {
      return absl::DataLossError(absl::StrCat(
          where, ": data ends at byte ", t.end, " but the data section has ",
          data_size, " bytes (truncated file)"));
    }
    if (t.end - t.begin != elements * DTypeSize(t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": shape ", ShapeString(t.shape), " of ", v["dtype"].get<std::string>(),
          " needs ", elements * DTypeSize(t.dtype), " bytes, data_offsets give ",
          t.end - t.begin));
    }
    f.tensors_[name] = std::move(t);
  }
  f.bytes_ = std::move(bytes);
  return f;
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::Lookup(
    const std::string& name, const std::vector<int64_t>& expected) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("safetensors: no tensor '", name, "'"));
  }
  const TensorInfo& t = it->second;
  bool match = expected.empty() || expected.size() == t.shape.size();
  for (size_t i = 0; match && i < expected.size(); ++i) {
    match = expected[i] < 0 || expected[i] == t.shape[i];
  }
  if (!match) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: tensor '", name, "' has shape ", ShapeString(t.shape),
        ", expected ", ShapeString(expected), " (-1 = any)"));
  }
  return &t;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloat(
    const std::string& name, const std::vector<int64_t>& expected) const {
  absl::StatusOr<const TensorInfo*> t = Lookup(name, expected);
  if (!t.ok()) return t.status();
  const char* src = bytes_.data() + data_offset_ + (*t)->begin;
  const int64_t n = (*t)->num_elements();
  std::vector<float> out(n);
  switch ((*t)->dtype) {
    case TensorDType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      break;
    case TensorDType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = BitsToFloat(static_cast<uint32_t>(h) << 16);
      }
      break;
    case TensorDType::kF32:
      if (n > 0) std::memcpy(out.data(), src, n * 4);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors: tensor '", name, "' expected dtype F16, BF16 or F32"));
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> SafetensorsFile::ReadInt64(
    const std::string& name, const std::vector<int64_t>& expected) const {
  absl::StatusOr<const TensorInfo*> t = Lookup(name, expected);
  if (!t.ok()) return t.status();
  if ((*t)->dtype != TensorDType::kI64) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: tensor '", name, "' expected dtype I64"));
  }
  std::vector<int64_t> out((*t)->num_elements());
  if (!out.empty()) {
    std::memcpy(out.data(), bytes_.data() + data_offset_ + (*t)->begin,
                out.size() * 8);
  }
  return out;
}

}  // namespace ropekv::planner
