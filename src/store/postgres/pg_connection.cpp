#include "store/postgres/pg_connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace staple::store::postgres {

namespace {

Error StorageFailure(std::string message) {
  return MakeError(ErrorKind::kStorage, std::move(message));
}

// libpq's messages end with a newline and may span lines; one line reads better in logs.
std::string OneLine(std::string text) {
  // libpq's messages end with a newline and indent their hints with "\n\t".
  std::string line;
  line.reserve(text.size());
  for (const char c : text) {
    const bool space = c == '\n' || c == '\t' || c == '\r' || c == ' ';
    if (space && (line.empty() || line.back() == ' ')) continue;
    line += space ? ' ' : c;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line;
}

// `text` with every occurrence of any of `secrets` replaced by "***". libpq does not echo
// passwords, but a message built from a URL or a server's complaint must never be the one
// exception. One pass, the longest secret that matches at a position first, and a replacement
// is never searched again: scrubbing one secret after another made each "***" of a one-character
// secret grow threefold with every further secret, so a URL of many `password=*` parameters took
// exponential time and memory (found by tests/fuzz/db_url_fuzz.cpp).
std::string Scrub(std::string_view text, std::vector<std::string> secrets) {
  std::erase_if(secrets, [](const std::string& secret) { return secret.empty(); });
  std::sort(secrets.begin(), secrets.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
  secrets.erase(std::unique(secrets.begin(), secrets.end()), secrets.end());
  std::string out;
  out.reserve(text.size());
  for (std::size_t at = 0; at < text.size();) {
    const auto match = std::find_if(secrets.begin(), secrets.end(), [&](const std::string& s) {
      return text.compare(at, s.size(), s) == 0;
    });
    if (match != secrets.end()) {
      out += "***";
      at += match->size();
    } else {
      out += text[at++];
    }
  }
  return out;
}

// The raw password of "scheme://user:password@host…", or "" when there is none.
std::string RawUrlPassword(const std::string& url) {
  const std::size_t scheme = url.find("://");
  if (scheme == std::string::npos) return {};
  const std::size_t authority = scheme + 3;
  const std::size_t end = url.find_first_of("/?", authority);
  const std::size_t at = url.rfind('@', end == std::string::npos ? url.size() : end);
  if (at == std::string::npos || at < authority) return {};
  const std::size_t colon = url.find(':', authority);
  if (colon == std::string::npos || colon > at) return {};
  return url.substr(colon + 1, at - colon - 1);
}

// `text` with its valid %XX escapes decoded (as libpq decodes a query parameter's name).
std::string PercentDecoded(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    unsigned value = 0;
    if (text[i] == '%' && i + 2 < text.size() &&
        std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16).ptr ==
            text.data() + i + 3) {
      out += static_cast<char>(value);
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

// The raw values of the URL's `password` query parameters ("…?password=secret&…", the name
// possibly percent-encoded).
std::vector<std::string> RawQueryPasswords(const std::string& url) {
  std::vector<std::string> passwords;
  const std::size_t query = url.find('?');
  if (query == std::string::npos) return passwords;
  std::string_view rest = std::string_view(url).substr(query + 1);
  while (!rest.empty()) {
    const std::size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    const std::size_t equals = pair.find('=');
    if (equals != std::string_view::npos && PercentDecoded(pair.substr(0, equals)) == "password") {
      passwords.emplace_back(pair.substr(equals + 1));
    }
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return passwords;
}

}  // namespace

// ---- Target ----

Result<Target> ParseTarget(const std::string& url) {
  if (url.rfind("postgresql://", 0) != 0 && url.rfind("postgres://", 0) != 0) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "a PostgreSQL URL starts with postgresql:// or postgres://");
  }
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(url.c_str(), &parse_error);
  if (options == nullptr) {
    std::string reason = parse_error != nullptr ? OneLine(parse_error) : "out of memory";
    PQfreemem(parse_error);
    // The reason may quote the URL or one of its tokens: keep only libpq's wording, with no
    // password, whether it came before the '@' or as a `password` query parameter.
    std::vector<std::string> secrets = RawQueryPasswords(url);
    secrets.push_back(url);
    secrets.push_back(RawUrlPassword(url));
    reason = Scrub(reason, std::move(secrets));
    return MakeError(ErrorKind::kInvalidArgument, "invalid PostgreSQL URL: " + reason);
  }
  Target target;
  std::string user, host, port, dbname;
  for (PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (option->val == nullptr || option->val[0] == '\0') continue;
    const std::string keyword = option->keyword;
    target.keywords.push_back(keyword);
    target.values.emplace_back(option->val);
    if (keyword == "user") user = option->val;
    if (keyword == "host" || (keyword == "hostaddr" && host.empty())) host = option->val;
    if (keyword == "port") port = option->val;
    if (keyword == "dbname") dbname = option->val;
    if (keyword == "password") target.password = option->val;
  }
  PQconninfoFree(options);
  if (std::find(target.keywords.begin(), target.keywords.end(), "application_name") ==
      target.keywords.end()) {
    target.keywords.emplace_back("application_name");
    target.values.emplace_back("staple");
  }
  target.description = "PostgreSQL " + (user.empty() ? std::string() : user + "@") +
                       (host.empty() ? std::string("localhost") : host) +
                       (port.empty() ? std::string() : ":" + port) + "/" + dbname;
  return target;
}

// ---- QueryResult ----

QueryResult::~QueryResult() {
  if (result_ != nullptr) PQclear(result_);
}

QueryResult::QueryResult(QueryResult&& other) noexcept
    : result_(std::exchange(other.result_, nullptr)) {}

QueryResult& QueryResult::operator=(QueryResult&& other) noexcept {
  if (this != &other) {
    if (result_ != nullptr) PQclear(result_);
    result_ = std::exchange(other.result_, nullptr);
  }
  return *this;
}

int QueryResult::Rows() const { return result_ != nullptr ? PQntuples(result_) : 0; }

bool QueryResult::IsNull(int row, int column) const {
  return PQgetisnull(result_, row, column) != 0;
}

std::string_view QueryResult::Text(int row, int column) const {
  if (IsNull(row, column)) return {};
  return std::string_view(PQgetvalue(result_, row, column),
                          static_cast<std::size_t>(PQgetlength(result_, row, column)));
}

std::int64_t QueryResult::Int64(int row, int column) const {
  const std::string_view text = Text(row, column);
  std::int64_t value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

std::optional<std::int64_t> QueryResult::OptionalInt64(int row, int column) const {
  if (IsNull(row, column)) return std::nullopt;
  return Int64(row, column);
}

std::int64_t QueryResult::AffectedRows() const {
  const char* tuples = result_ != nullptr ? PQcmdTuples(result_) : "";
  std::int64_t value = 0;
  std::from_chars(tuples, tuples + std::strlen(tuples), value);
  return value;
}

// ---- Connection ----

Connection::~Connection() { Disconnect(); }

void Connection::Disconnect() {
  if (conn_ != nullptr) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
}

Error Connection::Fail(std::string_view what, std::string detail) {
  if (detail.empty() && conn_ != nullptr) detail = PQerrorMessage(conn_);
  Disconnect();
  std::string message = target_.description + ": " + std::string(what);
  detail = OneLine(std::move(detail));
  if (!detail.empty()) message += ": " + detail;
  return StorageFailure(Scrub(message, {target_.password}));
}

// Waits until the connection's socket is ready for `events` (POLLIN and/or POLLOUT) or the
// deadline passes. Sets *readable when input is waiting (or the socket failed: libpq then tells).
Status Connection::WaitSocket(short events, Deadline deadline, bool* readable) {
  const int fd = PQsocket(conn_);
  if (fd < 0) return Fail("connection lost", "");
  for (;;) {
    const auto remaining =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (remaining <= 0) return Fail("timed out waiting for the server", "no answer in time");
    pollfd pfd{};
    pfd.fd = fd;
    pfd.events = events;
    const int ready = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(remaining, INT_MAX)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Fail("cannot wait for the server", std::strerror(errno));
    }
    if (ready == 0) continue;  // the deadline check above ends the loop
    if (readable != nullptr) *readable = (pfd.revents & (POLLIN | POLLERR | POLLHUP)) != 0;
    return Ok();
  }
}

Status Connection::Connect(Deadline deadline) {
  Disconnect();
  std::vector<const char*> keywords;
  std::vector<const char*> values;
  for (std::size_t i = 0; i < target_.keywords.size(); ++i) {
    keywords.push_back(target_.keywords[i].c_str());
    values.push_back(target_.values[i].c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);
  conn_ = PQconnectStartParams(keywords.data(), values.data(), 0);
  if (conn_ == nullptr)
    return StorageFailure(target_.description + ": cannot allocate a connection");
  if (PQstatus(conn_) == CONNECTION_BAD) return Fail("cannot connect", "");

  // PQconnectPoll's protocol: wait for the socket in the direction it asks, then call it again,
  // until it reports success or failure. The socket may change between calls (several hosts).
  PostgresPollingStatusType polling = PGRES_POLLING_WRITING;
  while (polling != PGRES_POLLING_OK) {
    if (polling == PGRES_POLLING_FAILED) return Fail("cannot connect", "");
    const short events = polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    if (auto waited = WaitSocket(events, deadline, nullptr); !waited) {
      return Fail("cannot connect", "timed out");
    }
    polling = PQconnectPoll(conn_);
  }
  // Server notices (e.g. "terminating connection" warnings) would go to stderr by default; the
  // errors that matter reach callers as results.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  if (PQsetnonblocking(conn_, 1) != 0) return Fail("cannot switch to non-blocking mode", "");
  if (PQenterPipelineMode(conn_) != 1) return Fail("cannot enter pipeline mode", "");
  return Ok();
}

bool Connection::CheckAlive() {
  if (conn_ == nullptr) return false;
  if (PQstatus(conn_) != CONNECTION_OK) {
    Disconnect();
    return false;
  }
  // An idle connection has nothing to read unless the server closed it or said goodbye
  // (notices and parameter changes are harmless and consumed here).
  pollfd pfd{};
  pfd.fd = PQsocket(conn_);
  pfd.events = POLLIN;
  if (pfd.fd < 0) {
    Disconnect();
    return false;
  }
  if (::poll(&pfd, 1, 0) > 0) {
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) {
      Disconnect();
      return false;
    }
    // A server that is shutting down sends an error before closing; anything it queued for an
    // idle connection means the session is going away.
    if (PQisBusy(conn_) == 0) {
      if (pg_result* stray = PQgetResult(conn_); stray != nullptr) {
        PQclear(stray);
        Disconnect();
        return false;
      }
    }
  }
  return true;
}

Status Connection::Flush(Deadline deadline) {
  // Non-blocking output: keep flushing until libpq's buffer is empty, reading meanwhile so the
  // server never blocks on a full socket while we block on ours.
  for (;;) {
    const int flushed = PQflush(conn_);
    if (flushed == 0) return Ok();
    if (flushed < 0) return Fail("cannot send to the server", "");
    bool readable = false;
    if (auto waited = WaitSocket(POLLIN | POLLOUT, deadline, &readable); !waited) return waited;
    if (readable && PQconsumeInput(conn_) == 0) return Fail("connection lost", "");
  }
}

Result<pg_result*> Connection::NextResult(Deadline deadline) {
  while (PQisBusy(conn_) != 0) {
    if (auto waited = WaitSocket(POLLIN, deadline, nullptr); !waited) return waited.error();
    if (PQconsumeInput(conn_) == 0) return Fail("connection lost", "");
  }
  return PQgetResult(conn_);
}

Result<std::vector<QueryResult>> Connection::Run(const std::vector<Query>& queries,
                                                 Deadline deadline) {
  if (conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    return Fail("not connected", "");
  }
  std::vector<const char*> values;
  for (const Query& query : queries) {
    values.clear();
    for (const auto& param : query.params) values.push_back(param ? param->c_str() : nullptr);
    if (PQsendQueryParams(conn_, query.sql.c_str(), static_cast<int>(values.size()), nullptr,
                          values.data(), nullptr, nullptr, 0) != 1) {
      return Fail("cannot send a query", "");
    }
  }
  if (PQpipelineSync(conn_) != 1) return Fail("cannot send a query", "");
  if (auto flushed = Flush(deadline); !flushed) return flushed.error();

  // Each query yields its result(s) then a NULL; a failed query makes every later one report
  // PGRES_PIPELINE_ABORTED; the Sync ends the pipeline with PGRES_PIPELINE_SYNC.
  std::vector<QueryResult> results;
  results.reserve(queries.size());
  std::string first_error;
  for (std::size_t i = 0; i < queries.size(); ++i) {
    QueryResult last;
    for (;;) {
      auto next = NextResult(deadline);
      if (!next) return next.error();
      if (*next == nullptr) break;
      const ExecStatusType status = PQresultStatus(*next);
      if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK && first_error.empty()) {
        const char* message = PQresultErrorMessage(*next);
        first_error = message != nullptr && message[0] != '\0' ? message : PQresStatus(status);
      }
      last = QueryResult(*next);
    }
    results.push_back(std::move(last));
  }
  auto sync = NextResult(deadline);
  if (!sync) return sync.error();
  const bool synced = *sync != nullptr && PQresultStatus(*sync) == PGRES_PIPELINE_SYNC;
  if (*sync != nullptr) PQclear(*sync);
  if (!first_error.empty()) return Fail("query failed", std::move(first_error));
  if (!synced) return Fail("unexpected answer from the server", "no pipeline sync");
  return results;
}

}  // namespace staple::store::postgres
