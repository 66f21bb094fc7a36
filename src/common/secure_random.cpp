#include "common/secure_random.h"

#include <openssl/rand.h>

#include <climits>
#include <stdexcept>

namespace staple {

void SecureRandomBytes(unsigned char* out, std::size_t size) {
  while (size > 0) {
    const int chunk = size > INT_MAX ? INT_MAX : static_cast<int>(size);
    if (RAND_bytes(out, chunk) != 1) {
      throw std::runtime_error("no random bytes: OpenSSL's RAND_bytes failed");
    }
    out += chunk;
    size -= static_cast<std::size_t>(chunk);
  }
}

SecureRandomEngine::result_type SecureRandomEngine::operator()() {
  if (next_ == pool_.size()) {
    SecureRandomBytes(reinterpret_cast<unsigned char*>(pool_.data()), sizeof pool_);
    next_ = 0;
  }
  return pool_[next_++];
}

}  // namespace staple
