// A fixed pool of threads that runs submitted work in order of submission.
//
// Reactor callbacks must not block, so work that takes long (building a
// profile's plans) runs here and the reactor finishes from the work's end.
//
// Thread safety: Submit may be called from any thread. The destructor runs
// what is queued, then joins the threads.
#ifndef ROPEKV_SERVICE_EXECUTOR_H_
#define ROPEKV_SERVICE_EXECUTOR_H_

#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace ropekv::service {

class Executor {
 public:
  // REQUIRES: threads >= 1.
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Submit(absl::AnyInvocable<void() &&> work);

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_EXECUTOR_H_
