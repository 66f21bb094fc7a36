#include "observe/log.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>

namespace staple::observe {
namespace {

LogFormat g_format = LogFormat::kText;

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

std::string NowUtc() {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const auto millis = duration_cast<milliseconds>(now.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(millis / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis % 1000);
}

// Text values that contain spaces or quotes are quoted so that a line stays splittable.
void AppendTextValue(std::string& line, const nlohmann::json& value) {
  if (!value.is_string()) {
    line += value.dump();
    return;
  }
  const auto& text = value.get_ref<const std::string&>();
  if (!text.empty() && text.find_first_of(" \"=\t\n") == std::string::npos) {
    line += text;
  } else {
    line += nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

}  // namespace

void InitLogging(LogFormat format, LogLevel min_level) {
  g_format = format;
  // Built without the registry's factory, which refuses a second logger of the same name: the
  // new default replaces the previous one, so a second call works.
  auto logger =
      std::make_shared<spdlog::logger>("staple", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%v");
  logger->set_level(ToSpdlog(min_level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void Log(LogLevel level, std::string_view message, const Fields& fields) {
  auto* logger = spdlog::default_logger_raw();
  if (!logger->should_log(ToSpdlog(level))) return;
  std::string line;
  if (g_format == LogFormat::kJson) {
    nlohmann::json object = nlohmann::json::object();
    object["time"] = NowUtc();
    object["level"] = LevelName(level);
    object["msg"] = message;
    for (const auto& [key, value] : fields) object[key] = value;
    line = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = fmt::format("{} {:<5} {}", NowUtc(), LevelName(level), message);
    for (const auto& [key, value] : fields) {
      line += ' ';
      line += key;
      line += '=';
      AppendTextValue(line, value);
    }
  }
  logger->log(ToSpdlog(level), "{}", line);
}

void FlushLogs() { spdlog::default_logger_raw()->flush(); }

std::string NewRequestId() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return fmt::format("{:016x}{:016x}", engine(), engine());
}

}  // namespace staple::observe
