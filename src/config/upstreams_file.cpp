#include "config/upstreams_file.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <tuple>
#include <utility>
#include <vector>

namespace staple::config {
namespace {

using upstream::CooldownSettings;
using upstream::RouterSettings;
using upstream::Settings;
using upstream::UpstreamEntry;

constexpr std::int64_t kMaxMilliseconds = 86'400'000;  // one day
constexpr std::size_t kMaxNameLength = 64;
constexpr std::size_t kMaxModelLength = 256;
constexpr std::size_t kMaxQuoted = 64;  // characters of a file's value echoed in an error

// The fields an [[upstream]] entry may have; anything else is a typo and an error.
constexpr const char* kEntryFields[] = {
    "name",
    "base_url",
    "api_key_env",
    "models",
    "weight",
    "priority",
    "rename",
    "max_concurrent",
    "hedge_after_ms",
    "max_retries",
    "connect_timeout_ms",
    "first_byte_timeout_ms",
    "idle_timeout_ms",
    "total_timeout_ms",
    "stream_timeout_ms",
};
constexpr const char* kCooldownFields[] = {"failures", "window_ms", "period_ms"};
constexpr const char* kTopLevelFields[] = {"cooldown", "upstream"};

struct TimeoutField {
  const char* key;
  std::chrono::milliseconds Settings::*member;
};
constexpr TimeoutField kTimeoutFields[] = {
    {"connect_timeout_ms", &Settings::connect_timeout},
    {"first_byte_timeout_ms", &Settings::first_byte_timeout},
    {"idle_timeout_ms", &Settings::idle_timeout},
    {"total_timeout_ms", &Settings::total_timeout},
    {"stream_timeout_ms", &Settings::stream_timeout},
};

Error Invalid(std::string_view where, std::string_view why) {
  return MakeError(ErrorKind::kInvalidArgument, fmt::format("{}: {}", where, why));
}

std::string Where(std::string_view context, std::string_view field) {
  return fmt::format("{}: {}", context, field);
}

// A value from the file, quoted for an error message: escaped so that the message stays on one
// line, and cut short so that a pasted blob does not flood the log.
std::string Quote(std::string_view text) {
  std::string quoted = "\"";
  std::size_t count = 0;
  for (const char c : text) {
    if (count++ == kMaxQuoted) {
      quoted += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (byte < 0x20 || byte == 0x7f) {
      quoted += fmt::format("\\x{:02x}", byte);
    } else {
      quoted += c;
    }
  }
  quoted += '"';
  return quoted;
}

// toml++'s descriptions are one line today; make sure of it, since errors are one line.
std::string OneLine(std::string_view text) {
  std::string line(text);
  for (char& c : line) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) c = ' ';
  }
  return line;
}

const char* TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

bool IsNameCharacter(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsValidName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxNameLength &&
         std::all_of(name.begin(), name.end(), IsNameCharacter);
}

bool IsValidVariableName(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// A variable name is echoed in errors, but someone may paste the key itself into api_key_env, and
// some keys (Groq's "gsk_...") are valid variable names. Variable names are short and rarely mix
// lower-case letters with digits; generated keys are long and nearly always do.
bool LooksLikeKey(std::string_view name) {
  const bool lower =
      std::any_of(name.begin(), name.end(), [](char c) { return c >= 'a' && c <= 'z'; });
  const bool digit =
      std::any_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
  return name.size() >= 20 && lower && digit;
}

std::string RangeText(std::int64_t min, std::int64_t max) {
  if (min < 0) return fmt::format("from {} to {}", min, max);
  return fmt::format("{}-{}", min, max);
}

Result<std::int64_t> ReadInteger(const toml::node& node, std::string_view where, std::int64_t min,
                                 std::int64_t max) {
  const auto* integer = node.as_integer();
  if (integer == nullptr) {
    return Invalid(
        where, fmt::format("expected an integer {}, got {}", RangeText(min, max), TypeName(node)));
  }
  const std::int64_t value = integer->get();
  if (value < min || value > max) {
    return Invalid(where,
                   fmt::format("expected an integer {}, got {}", RangeText(min, max), value));
  }
  return value;
}

Result<std::string> ReadString(const toml::node& node, std::string_view where) {
  const auto* string = node.as_string();
  if (string == nullptr)
    return Invalid(where, fmt::format("expected a string, got {}", TypeName(node)));
  return string->get();
}

// Unknown keys are errors so that a typo ("weigth") does not silently leave a default in place.
template <std::size_t N>
Status CheckFields(const toml::table& table, std::string_view context,
                   const char* const (&known)[N]) {
  for (const auto& [key, node] : table) {
    const std::string_view name = key.str();
    if (std::find_if(std::begin(known), std::end(known),
                     [&](const char* field) { return name == field; }) != std::end(known)) {
      continue;
    }
    if (name == "api_key") {
      return Invalid(Where(context, "api_key"),
                     "keys are never written in this file: put the key in an environment "
                     "variable and give its name as api_key_env");
    }
    return Invalid(context, fmt::format("unknown field {}", Quote(name)));
  }
  return Ok();
}

Result<CooldownSettings> ParseCooldown(const toml::node& node, const std::string& file) {
  const std::string context = Where(file, "cooldown");
  const auto* table = node.as_table();
  if (table == nullptr)
    return Invalid(context, fmt::format("expected a table, got {}", TypeName(node)));
  if (auto checked = CheckFields(*table, context, kCooldownFields); !checked.ok()) {
    return checked.error();
  }
  CooldownSettings cooldown;
  if (const toml::node* failures = table->get("failures")) {
    auto value = ReadInteger(*failures, Where(context, "failures"), 1, 1000);
    if (!value.ok()) return value.error();
    cooldown.failures = static_cast<int>(*value);
  }
  if (const toml::node* window = table->get("window_ms")) {
    auto value = ReadInteger(*window, Where(context, "window_ms"), 1, kMaxMilliseconds);
    if (!value.ok()) return value.error();
    cooldown.window = std::chrono::milliseconds(*value);
  }
  if (const toml::node* period = table->get("period_ms")) {
    auto value = ReadInteger(*period, Where(context, "period_ms"), 1, kMaxMilliseconds);
    if (!value.ok()) return value.error();
    cooldown.period = std::chrono::milliseconds(*value);
  }
  return cooldown;
}

// http:// or https://, a host, an optional numeric port, a path; no query or fragment (paths are
// appended to it). The URL is not echoed: it may carry a user and password.
Result<std::string> ParseBaseUrl(const toml::node& node, std::string_view where) {
  auto url = ReadString(node, where);
  if (!url.ok()) return url.error();
  std::string text = std::move(*url);
  const auto fail = [&] {
    return Invalid(where,
                   "expected an http:// or https:// URL with a host (no spaces, query or "
                   "fragment)");
  };
  std::size_t scheme = 0;
  if (text.rfind("http://", 0) == 0) {
    scheme = 7;
  } else if (text.rfind("https://", 0) == 0) {
    scheme = 8;
  } else {
    return fail();
  }
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f || c == '?' || c == '#') return fail();
  }
  const std::size_t authority_end = std::min(text.find('/', scheme), text.size());
  std::string_view authority = std::string_view(text).substr(scheme, authority_end - scheme);
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return fail();
    host = authority.substr(0, close + 1);
    const auto rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return fail();
      port = rest.substr(1);
      if (port.empty()) return fail();
    }
  } else if (const auto colon = authority.find(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return fail();
  }
  if (host.empty() || host == "[]" || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return fail();
  }
  while (text.size() > authority_end && text.back() == '/') text.pop_back();
  return text;
}

// The key itself comes from the environment; errors name the variable, never its value.
Result<std::string> ReadApiKey(const toml::node& node, std::string_view where,
                               const Environment& environment) {
  auto name = ReadString(node, where);
  if (!name.ok()) return name.error();
  if (!IsValidVariableName(*name)) {
    // Not echoed: it may well be a pasted key.
    return Invalid(where,
                   "expected the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*) that "
                   "holds the key, not the key itself");
  }
  std::optional<std::string> value;
  if (environment) value = environment(*name);
  if (!value.has_value()) {
    if (LooksLikeKey(*name)) {
      return Invalid(where,
                     "the variable it names is not set (this looks like a key: give the name of "
                     "the environment variable that holds the key instead)");
    }
    return Invalid(where, fmt::format("{} is not set", *name));
  }
  if (value->empty()) return Invalid(where, fmt::format("{} is empty", *name));
  // The key goes into an Authorization header: a stray newline would break (or inject) headers.
  if (std::any_of(value->begin(), value->end(), [](char c) {
        const auto byte = static_cast<unsigned char>(c);
        return byte < 0x20 || byte == 0x7f;
      })) {
    return Invalid(where, fmt::format("{} contains a control character (a newline?)", *name));
  }
  return std::move(*value);
}

Result<std::vector<std::string>> ParseModels(const toml::node& node, std::string_view where) {
  const auto* array = node.as_array();
  if (array == nullptr) {
    return Invalid(
        where, fmt::format("expected a non-empty array of model names, got {}", TypeName(node)));
  }
  if (array->empty()) return Invalid(where, "expected a non-empty array of model names, got []");
  std::vector<std::string> models;
  for (std::size_t i = 0; i < array->size(); ++i) {
    const std::string item = fmt::format("{}: item {}", where, i + 1);
    auto model = ReadString((*array)[i], item);
    if (!model.ok()) return model.error();
    if (model->empty() || model->size() > kMaxModelLength) {
      return Invalid(item,
                     fmt::format("expected a model name of 1-{} characters", kMaxModelLength));
    }
    models.push_back(std::move(*model));
  }
  return models;
}

// toml++ keeps a table's keys sorted; their source positions give the file's order back.
Result<std::vector<std::pair<std::string, std::string>>> ParseRename(const toml::node& node,
                                                                     std::string_view where) {
  const auto* table = node.as_table();
  if (table == nullptr) {
    return Invalid(where, fmt::format("expected a table of model names, got {}", TypeName(node)));
  }
  struct Item {
    std::uint32_t line;
    std::uint32_t column;
    std::string from;
    std::string to;
  };
  std::vector<Item> items;
  for (const auto& [key, value] : *table) {
    const std::string from(key.str());
    const std::string item = fmt::format("{}: {}", where, Quote(from));
    if (from.empty() || from.size() > kMaxModelLength) {
      return Invalid(item,
                     fmt::format("expected a model name of 1-{} characters", kMaxModelLength));
    }
    if (from.find_first_of("*?") != std::string::npos) {
      return Invalid(item, "a renamed model is an exact name (no '*' or '?')");
    }
    auto to = ReadString(value, item);
    if (!to.ok()) return to.error();
    if (to->empty() || to->size() > kMaxModelLength) {
      return Invalid(item,
                     fmt::format("expected a model name of 1-{} characters", kMaxModelLength));
    }
    items.push_back({key.source().begin.line, key.source().begin.column, from, std::move(*to)});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
  std::vector<std::pair<std::string, std::string>> rename;
  for (auto& item : items) rename.emplace_back(std::move(item.from), std::move(item.to));
  return rename;
}

// One [[upstream]] table; `index` counts from 1. Fields are read in the order the README lists
// them, so that the first error reported is the first a reader would look at.
Result<UpstreamEntry> ParseEntry(const toml::node& node, std::size_t index, const std::string& file,
                                 const Settings& defaults, const Environment& environment) {
  std::string context = fmt::format("{}: upstream {}", file, index);
  const auto* table = node.as_table();
  if (table == nullptr)
    return Invalid(context, fmt::format("expected a table, got {}", TypeName(node)));

  // Name the entry in every later error once its name is known to be printable.
  const toml::node* name_node = table->get("name");
  if (name_node == nullptr) return Invalid(Where(context, "name"), "missing (required)");
  auto name = ReadString(*name_node, Where(context, "name"));
  if (!name.ok()) return name.error();
  if (!IsValidName(*name)) {
    return Invalid(Where(context, "name"),
                   fmt::format("expected 1-{} characters of [A-Za-z0-9._-], got {}", kMaxNameLength,
                               Quote(*name)));
  }
  context += fmt::format(" (\"{}\")", *name);
  if (auto checked = CheckFields(*table, context, kEntryFields); !checked.ok()) {
    return checked.error();
  }

  UpstreamEntry entry;
  entry.name = std::move(*name);
  entry.settings = defaults;

  const toml::node* base_url = table->get("base_url");
  if (base_url == nullptr) return Invalid(Where(context, "base_url"), "missing (required)");
  auto url = ParseBaseUrl(*base_url, Where(context, "base_url"));
  if (!url.ok()) return url.error();
  entry.settings.base_url = std::move(*url);

  // Without api_key_env the upstream is keyless (a local server): the global key is not sent to
  // an upstream it was not meant for.
  entry.settings.api_key.clear();
  if (const toml::node* key_env = table->get("api_key_env")) {
    auto key = ReadApiKey(*key_env, Where(context, "api_key_env"), environment);
    if (!key.ok()) return key.error();
    entry.settings.api_key = std::move(*key);
  }

  const toml::node* models = table->get("models");
  if (models == nullptr) return Invalid(Where(context, "models"), "missing (required)");
  auto model_list = ParseModels(*models, Where(context, "models"));
  if (!model_list.ok()) return model_list.error();
  entry.models = std::move(*model_list);

  if (const toml::node* weight = table->get("weight")) {
    auto value = ReadInteger(*weight, Where(context, "weight"), 1, 10'000);
    if (!value.ok()) return value.error();
    entry.weight = static_cast<unsigned>(*value);
  }
  if (const toml::node* priority = table->get("priority")) {
    auto value = ReadInteger(*priority, Where(context, "priority"), -1000, 1000);
    if (!value.ok()) return value.error();
    entry.priority = static_cast<int>(*value);
  }
  if (const toml::node* rename = table->get("rename")) {
    auto pairs = ParseRename(*rename, Where(context, "rename"));
    if (!pairs.ok()) return pairs.error();
    entry.rename = std::move(*pairs);
  }
  if (const toml::node* max_concurrent = table->get("max_concurrent")) {
    auto value = ReadInteger(*max_concurrent, Where(context, "max_concurrent"), 0, 1'000'000);
    if (!value.ok()) return value.error();
    entry.max_concurrent = static_cast<std::size_t>(*value);
  }
  if (const toml::node* hedge = table->get("hedge_after_ms")) {
    auto value = ReadInteger(*hedge, Where(context, "hedge_after_ms"), 1, kMaxMilliseconds);
    if (!value.ok()) return value.error();
    entry.hedge_after = std::chrono::milliseconds(*value);
  }
  for (const auto& timeout : kTimeoutFields) {
    if (const toml::node* field = table->get(timeout.key)) {
      auto value = ReadInteger(*field, Where(context, timeout.key), 1, kMaxMilliseconds);
      if (!value.ok()) return value.error();
      entry.settings.*timeout.member = std::chrono::milliseconds(*value);
    }
  }
  if (const toml::node* max_retries = table->get("max_retries")) {
    auto value = ReadInteger(*max_retries, Where(context, "max_retries"), 0, 10);
    if (!value.ok()) return value.error();
    entry.settings.max_retries = static_cast<int>(*value);
  }
  return entry;
}

Result<toml::table> ParseToml(std::string_view text, const std::string& file) {
#if TOML_EXCEPTIONS
  try {
    return toml::parse(text, std::string_view(file));
  } catch (const toml::parse_error& err) {
    return Invalid(file,
                   fmt::format("line {}: {}", err.source().begin.line, OneLine(err.description())));
  }
#else
  toml::parse_result parsed = toml::parse(text, std::string_view(file));
  if (!parsed) {
    return Invalid(file, fmt::format("line {}: {}", parsed.error().source().begin.line,
                                     OneLine(parsed.error().description())));
  }
  return std::move(parsed).table();
#endif
}

}  // namespace

Result<upstream::RouterSettings> ParseUpstreams(std::string_view text, std::string_view file_name,
                                                const upstream::Settings& defaults,
                                                const Environment& environment) {
  const std::string file(file_name);
  auto parsed = ParseToml(text, file);
  if (!parsed.ok()) return parsed.error();
  const toml::table& root = *parsed;
  if (auto checked = CheckFields(root, file, kTopLevelFields); !checked.ok()) {
    return checked.error();
  }

  RouterSettings router;
  if (const toml::node* cooldown = root.get("cooldown")) {
    auto settings = ParseCooldown(*cooldown, file);
    if (!settings.ok()) return settings.error();
    router.cooldown = *settings;
  }

  const toml::node* upstreams = root.get("upstream");
  if (upstreams != nullptr && !upstreams->is_array()) {
    return Invalid(
        Where(file, "upstream"),
        fmt::format("expected an array of tables ([[upstream]]), got {}", TypeName(*upstreams)));
  }
  if (upstreams == nullptr || upstreams->as_array()->empty()) {
    return Invalid(file, "no upstreams: add at least one [[upstream]] table");
  }
  const toml::array& entries = *upstreams->as_array();
  std::vector<std::string> names;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    auto entry = ParseEntry(entries[i], i + 1, file, defaults, environment);
    if (!entry.ok()) return entry.error();
    const auto same = std::find(names.begin(), names.end(), entry->name);
    if (same != names.end()) {
      return Invalid(fmt::format("{}: upstream {} (\"{}\"): name", file, i + 1, entry->name),
                     fmt::format("\"{}\" is already used by upstream {}", entry->name,
                                 same - names.begin() + 1));
    }
    names.push_back(entry->name);
    router.upstreams.push_back(std::move(*entry));
  }
  return router;
}

Result<upstream::RouterSettings> LoadUpstreams(const std::string& path,
                                               const upstream::Settings& defaults,
                                               const Environment& environment) {
  const auto unreadable = [&path](int error) {
    return MakeError(
        ErrorKind::kInvalidArgument,
        fmt::format("cannot read STAPLE_UPSTREAMS file {}: {}", path, std::strerror(error)));
  };
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) return unreadable(errno != 0 ? errno : ENOENT);
  // istream::read turns a failing read (a directory: EISDIR) into badbit; errno keeps the cause.
  std::string text;
  char buffer[8192];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) return unreadable(errno != 0 ? errno : EIO);
  return ParseUpstreams(text, path, defaults, environment);
}

}  // namespace staple::config
