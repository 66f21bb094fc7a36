#pragma once

#include <chrono>
#include <optional>

#include "upstream/client.h"

// The retry policy of the upstream client, as pure functions so that it is tested without a server.
namespace staple::upstream {

// Whether a response status is worth another attempt: 429 (rate limited) and every 5xx.
bool IsRetryableStatus(long status);

// The wait the server asked for: `retry-after-ms` (milliseconds, as OpenAI sends it) or
// `retry-after` in seconds. An HTTP-date, a negative or an unparsable value count as absent.
// Header names must be lower-case, as Response::headers holds them.
std::optional<std::chrono::milliseconds> RetryAfter(const Headers& headers);

// The wait before retry number `retry` (1 for the first retry, i.e. the second attempt).
// Without `retry_after`: full jitter, `unit` * min(backoff_max, backoff_base * 2^(retry-1)), where
// `unit` is a uniform sample in [0, 1). A `retry_after` up to 4 * backoff_max is honoured as given;
// a longer one returns std::nullopt: the server wants a pause longer than a request should wait,
// so the caller should return the response instead of retrying.
std::optional<std::chrono::milliseconds> RetryDelay(
    const Settings& settings, int retry, std::optional<std::chrono::milliseconds> retry_after,
    double unit);

// A uniform sample in [0, 1) for RetryDelay's jitter (a generator per thread).
double UniformSample();

}  // namespace staple::upstream
