#pragma once

#include "http/router.h"

namespace staple::api {

// GET /console: the operator console, one page served from the binary (no build step, no CDN).
// The page itself holds nothing secret; everything it shows comes from the admin API, with the
// admin key the operator types in (kept for the browser tab only): the last hour's figures as
// charts (GET /admin/stats), a conversation by id (read, delete), and the client keys with their
// usage per day (list, create, revoke).
void RegisterConsole(http::Router& router);

}  // namespace staple::api
