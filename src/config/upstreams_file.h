#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "upstream/routes.h"

// STAPLE_UPSTREAMS: the TOML file that puts several upstreams behind Staple (README "Upstreams").
namespace staple::config {

using Environment = std::function<std::optional<std::string>(const std::string&)>;

// Parses the file's text. `file_name` only names the file in errors; `defaults` carries the global
// STAPLE_UPSTREAM_* settings every entry starts from; `environment` resolves api_key_env.
// Errors (kInvalidArgument) are one line naming the file, the entry and the field, e.g.
//   upstreams.toml: upstream 2 ("groq"): weight: expected an integer 1-10000, got -1
Result<upstream::RouterSettings> ParseUpstreams(std::string_view text, std::string_view file_name,
                                                const upstream::Settings& defaults,
                                                const Environment& environment);

// Reads `path` and parses it (an unreadable file is an error naming the path).
Result<upstream::RouterSettings> LoadUpstreams(const std::string& path,
                                               const upstream::Settings& defaults,
                                               const Environment& environment);

}  // namespace staple::config
