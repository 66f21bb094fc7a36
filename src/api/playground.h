#pragma once

#include "http/router.h"

namespace staple::api {

// GET /: a small self-contained chat page (no external assets, no build step) that talks to
// POST /openai-completion, streaming when asked, and keeps the user_id in the browser's storage.
void RegisterPlayground(http::Router& router);

}  // namespace staple::api
