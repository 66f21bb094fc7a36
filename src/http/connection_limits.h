#pragma once

// The defaults of ServerOptions::max_connections and max_connections_per_peer, from the process's
// open-file limit. Header-only, so that config/ resolves them without linking the server.

#include <sys/resource.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace staple::http {

// The open-file limit (RLIMIT_NOFILE, soft) of this process.
inline std::uint64_t OpenFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur == RLIM_INFINITY) return std::numeric_limits<std::uint32_t>::max();
  return static_cast<std::uint64_t>(limit.rlim_cur);
}

// Raises the soft open-file limit to the hard limit, when allowed; returns the soft limit after.
// Call at start-up, before any thread starts.
inline std::uint64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    // Refused (e.g. a hard limit above the kernel's nr_open): the soft limit stays as it was.
    ::setrlimit(RLIMIT_NOFILE, &raised);
  }
  return OpenFileLimit();
}

// The default connection cap for an open-file limit: the limit minus a reserve of
// max(64, limit / 8) descriptors for the listeners, log files, the database, Redis and upstream
// connections (a streamed request holds one upstream connection); at least 1.
// E.g. 1024 -> 896, 20000 -> 17500, 1048576 -> 917504.
inline std::size_t DefaultMaxConnections(std::uint64_t file_limit) {
  const std::uint64_t reserve = std::max<std::uint64_t>(64, file_limit / 8);
  if (file_limit <= reserve) return 1;
  return static_cast<std::size_t>(file_limit - reserve);
}

// The default share of one peer address: a quarter of the cap, so that filling the cap takes at
// least four addresses; but at least 16 (a browser opens up to 6 connections per host, and an
// office behind one NAT address has several users), and never more than the cap.
inline std::size_t DefaultMaxConnectionsPerPeer(std::size_t max_connections) {
  return std::min(max_connections, std::max<std::size_t>(16, max_connections / 4));
}

}  // namespace staple::http
