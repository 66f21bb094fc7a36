#include "common/secure_random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>

#include <array>
#include <atomic>
#include <climits>
#include <cstring>
#include <stdexcept>

namespace staple {
namespace {

void FillFromOpenSsl(unsigned char* out, std::size_t size) {
  while (size > 0) {
    const int chunk = size > INT_MAX ? INT_MAX : static_cast<int>(size);
    if (RAND_bytes(out, chunk) != 1) {
      throw std::runtime_error("no random bytes: OpenSSL's RAND_bytes failed");
    }
    out += chunk;
    size -= static_cast<std::size_t>(chunk);
  }
}

// Incremented in the child of every fork(), so that a child never hands out the bytes its parent
// drew before forking (the pool below would otherwise be copied into it). Staple does not fork;
// this keeps the function safe for whoever does.
std::atomic<unsigned> fork_generation{0};
const int fork_handler_registered =
    pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1); });

// A thread's bytes drawn ahead: one RAND_bytes call costs about 0.7 µs whether it makes 18 bytes
// or 512 (OpenSSL 3's per-call DRBG overhead), and a /v1/responses request makes several ids.
// Bytes are wiped once handed out.
struct Pool {
  static constexpr std::size_t kSize = 512;
  std::array<unsigned char, kSize> bytes{};
  std::size_t next = kSize;
  unsigned generation = 0;

  ~Pool() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

}  // namespace

void SecureRandomBytes(unsigned char* out, std::size_t size) {
  (void)fork_handler_registered;
  thread_local Pool pool;
  if (size > Pool::kSize / 2) {
    FillFromOpenSsl(out, size);
    return;
  }
  const unsigned generation = fork_generation.load(std::memory_order_relaxed);
  if (pool.generation != generation) {
    pool.next = Pool::kSize;
    pool.generation = generation;
  }
  if (Pool::kSize - pool.next < size) {
    FillFromOpenSsl(pool.bytes.data(), Pool::kSize);
    pool.next = 0;
  }
  std::memcpy(out, pool.bytes.data() + pool.next, size);
  OPENSSL_cleanse(pool.bytes.data() + pool.next, size);
  pool.next += size;
}

SecureRandomEngine::result_type SecureRandomEngine::operator()() {
  result_type value = 0;
  SecureRandomBytes(reinterpret_cast<unsigned char*>(&value), sizeof value);
  return value;
}

}  // namespace staple
