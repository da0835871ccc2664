// Structured log lines: one JSON object per line on stderr, with a UTC
// timestamp, a level and an event name, so collectors parse them as is.
//
// Thread safety: lines from different threads never interleave.
#ifndef ROPEKV_SERVICE_LOG_H_
#define ROPEKV_SERVICE_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace ropekv::service {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below `level` are dropped. Default: kInfo.
void SetLogLevel(LogLevel level);
// "debug", "info", "warning" or "error"; false for anything else.
bool ParseLogLevel(std::string_view name, LogLevel* level);

// {"ts":"...","level":"info","event":"<event>","k1":"v1",...}
void Log(LogLevel level, std::string_view event,
         std::initializer_list<std::pair<std::string_view, std::string>> fields = {});

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_LOG_H_
