// Wire tensors -> fp32 (proto/tensor_util.h): shapes whose element count
// overflows, empty tensors and dtype conversions (the first case was found
// by fuzz_request).
#include "proto/tensor_util.h"

#include <cstdint>
#include <cstring>

#include "gtest/gtest.h"

namespace ropekv::proto {
namespace {

namespace pb = ::ropekv::v1;

pb::Tensor Make(pb::DType dtype, std::initializer_list<int64_t> shape, size_t bytes) {
  pb::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.mutable_data()->assign(bytes, '\0');
  return t;
}

TEST(TensorUtilTest, HugeShapesAreRejectedWithoutOverflow) {
  for (auto shape : {std::initializer_list<int64_t>{4658405074878297080, 2},
                     std::initializer_list<int64_t>{INT64_MAX, INT64_MAX},
                     std::initializer_list<int64_t>{3, INT64_MAX / 2 + 1}}) {
    absl::StatusOr<std::vector<float>> v = TensorToFloats(Make(pb::DTYPE_FP16, shape, 16), {-1, -1}, "x");
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(v.status().message().find("x.data"), std::string::npos) << v.status();
  }
}

TEST(TensorUtilTest, ZeroDimensionMakesAnEmptyTensor) {
  absl::StatusOr<std::vector<float>> v = TensorToFloats(Make(pb::DTYPE_FP32, {INT64_MAX, 0}, 0), {-1, -1}, "x");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->empty());
  EXPECT_FALSE(TensorToFloats(Make(pb::DTYPE_FP32, {5, 0}, 4), {-1, -1}, "x").ok());
}

TEST(TensorUtilTest, ConvertsEachDtype) {
  pb::Tensor t = Make(pb::DTYPE_FP16, {2}, 4);
  const uint16_t halves[2] = {0x3C00, 0xC000};  // 1, -2
  std::memcpy(t.mutable_data()->data(), halves, 4);
  EXPECT_EQ(*TensorToFloats(t, {2}, "x"), (std::vector<float>{1.0f, -2.0f}));
  t.set_dtype(pb::DTYPE_BF16);
  const uint16_t bf[2] = {0x3F80, 0x4040};  // 1, 3
  std::memcpy(t.mutable_data()->data(), bf, 4);
  EXPECT_EQ(*TensorToFloats(t, {2}, "x"), (std::vector<float>{1.0f, 3.0f}));
  EXPECT_EQ(TensorToFloats(t, {3}, "x").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::proto
