#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace staple {

// Appends `value` to `out` exactly as value.dump(-1, ' ', false, error_handler_t::replace) writes
// it (compact; invalid UTF-8 replaced by U+FFFD), through one serializer per thread and JSON type.
//
// Why: dump() constructs a serializer per call, and that allocates a 512-byte indentation string
// and a shared output adapter and reads the locale, which costs more than dumping a short value.
// Writing a response object as text appends some twenty small values per request
// (bench/micro/responses_bench.cpp: ResponseObjectText 4.2 → 3.2 µs). The serializer is
// nlohmann's own (nlohmann::detail, pinned with Debian's nlohmann-json3-dev 3.11); it keeps no
// state between dumps besides its buffers.
template <class BasicJson>
void AppendJsonText(std::string& out, const BasicJson& value) {
  thread_local std::string text;
  thread_local nlohmann::detail::serializer<BasicJson> serializer(
      nlohmann::detail::output_adapter<char>(text), ' ', BasicJson::error_handler_t::replace);
  text.clear();
  serializer.dump(value, /*pretty_print=*/false, /*ensure_ascii=*/false, /*indent_step=*/0);
  out += text;
}

// The same as a new string.
template <class BasicJson>
std::string JsonText(const BasicJson& value) {
  std::string out;
  AppendJsonText(out, value);
  return out;
}

}  // namespace staple
