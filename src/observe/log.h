#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace staple::observe {

enum class LogFormat { kText, kJson };
enum class LogLevel { kDebug, kInfo, kWarn, kError };

// Extra key/value pairs of one log line.
using Fields = std::vector<std::pair<std::string, nlohmann::json>>;

// Sets up the process-wide logger writing to stderr: text lines ("<time> <level> <message>
// key=value ...") or one JSON object per line. Call once at start-up, before any other thread
// logs; safe to call again in tests.
void InitLogging(LogFormat format, LogLevel min_level = LogLevel::kInfo);

// Thread-safe. Never pass secrets: callers mask them first.
void Log(LogLevel level, std::string_view message, const Fields& fields = {});

inline void Info(std::string_view message, const Fields& fields = {}) {
  Log(LogLevel::kInfo, message, fields);
}
inline void Warn(std::string_view message, const Fields& fields = {}) {
  Log(LogLevel::kWarn, message, fields);
}
inline void Error(std::string_view message, const Fields& fields = {}) {
  Log(LogLevel::kError, message, fields);
}

// Flushes buffered lines (at shutdown).
void FlushLogs();

// A new request id: 32 lower-case hex characters, unique for practical purposes.
std::string NewRequestId();

}  // namespace staple::observe
