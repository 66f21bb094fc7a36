#pragma once

#include <string>
#include <string_view>

#include "http/message.h"

namespace staple::api {

// The seed's error shape: {"error": "<message>"} plus an optional "type".
http::Response SeedError(int status, std::string_view message, std::string_view type = {});

// OpenAI's error shape, which the official SDKs turn into their error classes:
// {"error": {"message": "...", "type": "...", "code": ...}}.
http::Response OpenAIError(int status, std::string_view message, std::string_view type,
                           std::string_view code = {});

// The router's and server's error formatter: OpenAI's shape under /v1/, the seed's elsewhere.
http::Response FormatError(int status, std::string_view message, std::string_view path);

}  // namespace staple::api
