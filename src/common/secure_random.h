#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace staple {

// Unpredictable bytes for what grants access (client keys, conversation and response ids) from
// OpenSSL's CSPRNG: RAND_bytes, a DRBG per thread seeded and reseeded from the kernel, so that an
// id costs no system call (one getrandom per id showed in the /v1 profile, bench/RESULTS.md).
// Draws of up to 256 bytes come from 512 bytes that each thread takes from RAND_bytes at a time
// (a call costs about as much for 18 bytes as for 512), wiped as they are handed out and
// forgotten in the child of a fork. Thread-safe. Throws std::runtime_error when OpenSSL cannot
// provide them (no entropy source).
void SecureRandomBytes(unsigned char* out, std::size_t size);

// A UniformRandomNumberGenerator over SecureRandomBytes, for boost::uuids::basic_random_generator
// (taken by reference: it needs no seeding). Each value is 4 bytes of SecureRandomBytes, whose
// per-thread bytes drawn ahead make that cheap.
class SecureRandomEngine {
 public:
  using result_type = std::uint32_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }

  result_type operator()();
};

}  // namespace staple
