// A sticky CUDA error in a serving process: the server must turn its health
// to NOT_SERVING and fail calls with UNAVAILABLE rather than return numbers
// from a broken device. Its own binary, since the fault ends the process's
// use of the GPU.
#include <cstdlib>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_info.cuh"
#include "tests/gpu/fault_kernel.h"
#include "tests/integration/server_fixture.h"

namespace ropekv {
namespace {

namespace pb = ::ropekv::v1;
using absl::StatusCode;

class CudaFaultTest : public testing::ServerFixture {};

TEST_F(CudaFaultTest, StickyErrorTurnsHealthNotServingAndCallsUnavailable) {
  int devices = 0;
  if (kernels::cuda::CountDevices(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device visible";
  }
  setenv("ROPEKV_TEST_BACKEND", "cuda", 1);
  Start();
  ASSERT_STREQ(server_->backend_name(), "cuda");
  client::Client& c = C();
  Prepare(c, 64);
  absl::StatusOr<pb::AttendResponse> fine = c.Attend(Query("s"));
  ASSERT_TRUE(fine.ok()) << fine.status();
  ASSERT_TRUE(*c.Healthy());

  ASSERT_NE(testing::CorruptDeviceContext(0), cudaSuccess);

  absl::StatusOr<pb::AttendResponse> after = c.Attend(Query("s"));
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable) << after.status();
  EXPECT_NE(after.status().message().find("CUDA"), std::string::npos) << after.status();
  std::vector<float> k = testing::RandomNormal(testing::kKvHeads * 8 * testing::kHeadDim, 1);
  std::vector<client::LayerKv> layers = {{0, 64, testing::kKvHeads, 8, testing::kHeadDim, k, k}};
  EXPECT_EQ(c.Append("s", layers).status().code(), StatusCode::kUnavailable);
  // The health service turns NOT_SERVING within the janitor's period.
  bool serving = true;
  for (int i = 0; i < 50 && serving; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    serving = c.Healthy().value_or(true);
  }
  EXPECT_FALSE(serving);
  EXPECT_EQ(c.Attend(Query("s")).status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace ropekv
