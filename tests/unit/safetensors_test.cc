#include "planner/safetensors.h"

#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "planner/calibration.h"
#include "planner/half.h"

namespace ropekv::planner {
namespace {

std::string Build(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

std::string Floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}

TEST(SafetensorsTest, ReadsF32F16AndI64) {
  std::string data = Floats({1.5f, -2.0f, 3.25f, 0.0f});
  const uint16_t halves[] = {FloatToHalf(0.5f), FloatToHalf(-1.0f)};
  data.append(reinterpret_cast<const char*>(halves), 4);
  const int64_t ints[] = {0, 7};
  data.append(reinterpret_cast<const char*>(ints), 16);
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},)"
      R"("i":{"dtype":"I64","shape":[2],"data_offsets":[20,36]},)"
      R"("__metadata__":{"model":"x"}})";
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(Build(header, data));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("model"), "x");
  EXPECT_EQ(*f->ReadFloat("a", {2, 2}), (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}));
  EXPECT_EQ(*f->ReadFloat("h", {-1}), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(*f->ReadInt64("i"), (std::vector<int64_t>{0, 7}));
}

TEST(SafetensorsTest, RejectsTruncatedFiles) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const std::string good = Build(header, Floats({1, 2, 3, 4}));
  ASSERT_TRUE(SafetensorsFile::Parse(good).ok());
  for (size_t keep : {size_t{0}, size_t{7}, size_t{20}, good.size() - 1}) {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(good.substr(0, keep));
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << keep << ": " << f.status();
  }
}

TEST(SafetensorsTest, RejectsBadHeaders) {
  const std::string data = Floats({1, 2, 3, 4});
  const char* bad[] = {
      "not json",
      "[1,2]",
      R"({"a":{"dtype":"F32","shape":[4]}})",                                   // no offsets
      R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})",              // dtype
      R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",            // shape
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}})",              // begin > end
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})",             // size mismatch
      R"({"a":{"dtype":"F32","shape":[4000000000,4000000000],"data_offsets":[0,16]}})",
      R"({"__metadata__":{"x":1}})",
  };
  for (const char* h : bad) {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(Build(h, data));
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << h << ": " << f.status();
  }
  std::string huge(8, '\xFF');
  EXPECT_EQ(SafetensorsFile::Parse(huge).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, DtypeAndShapeMismatchesAreClear) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("i":{"dtype":"I32","shape":[1],"data_offsets":[16,20]}})";
  SafetensorsFile f = *SafetensorsFile::Parse(Build(header, Floats({1, 2, 3, 4, 0})));
  absl::Status s = f.ReadFloat("a", {4}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[2, 2]"), std::string::npos) << s;
  EXPECT_EQ(f.ReadFloat("a", {2, 3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.ReadFloat("i").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.ReadInt64("a").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.ReadFloat("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, GeometryMetadataMustMatchShapes) {
  const std::string meta =
      R"("__metadata__":{"layers":"1","q_heads":"2","kv_heads":"1","head_dim":"4",)"
      R"("rope_layout":"split-half","rotary_dim":"4","rope_theta":"10000"})";
  std::string data(2 * 4 * 4 + 1 * 4 * 4, '\0');
  const std::string ok_header =
      R"({"q":{"dtype":"F32","shape":[1,2,1,4],"data_offsets":[0,32]},)"
      R"("k":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[32,48]},)" + meta + "}";
  SafetensorsFile f = *SafetensorsFile::Parse(Build(ok_header, data));
  absl::StatusOr<ModelGeometry> g = GeometryFromMetadata(f);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->group_size(), 2);
  const std::string bad_header =
      R"({"q":{"dtype":"F32","shape":[1,1,2,4],"data_offsets":[0,32]},)"
      R"("k":{"dtype":"F32","shape":[1,1,1,4],"data_offsets":[32,48]},)" + meta + "}";
  SafetensorsFile b = *SafetensorsFile::Parse(Build(bad_header, data));
  EXPECT_EQ(GeometryFromMetadata(b).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner
