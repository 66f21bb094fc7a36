#include "common/allocator.h"

#include <malloc.h>

#include <cstddef>

// jemalloc's control interface, resolved only when jemalloc is linked into the process.
extern "C" int mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                       std::size_t newlen) __attribute__((weak));

namespace staple::common {
namespace {

// glibc hands the free memory at the top of a thread's heap back to the kernel as soon as 128 KiB
// of it are free, and the next request faults the same pages in again: about 4 page faults per
// request on the seed endpoint with a stored history, in the kernel's page-fault and madvise
// paths. Freed memory is kept up to kMallocTrimThreshold per heap instead. A fixed trim threshold
// also stops glibc from adapting its mmap threshold, so that one is set as well: blocks below
// kMallocMmapThreshold (request and response bodies) come from the heap, not from new mappings.
constexpr int kMallocTrimThreshold = 64 * 1024 * 1024;
constexpr int kMallocMmapThreshold = 4 * 1024 * 1024;

// jemalloc's MALLCTL_ARENAS_ALL: "arena.4096.purge" purges every arena.
constexpr const char* kPurgeAllArenas = "arena.4096.purge";
constexpr const char* kFlushThreadCache = "thread.tcache.flush";

}  // namespace

Allocator CurrentAllocator() { return mallctl != nullptr ? Allocator::kJemalloc : Allocator::kGlibc; }

const char* AllocatorName() {
  return CurrentAllocator() == Allocator::kJemalloc ? "jemalloc" : "glibc";
}

void TuneAllocator() {
  if (CurrentAllocator() == Allocator::kJemalloc) return;
  mallopt(M_TRIM_THRESHOLD, kMallocTrimThreshold);
  mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
}

void ReturnFreedMemory() {
  if (CurrentAllocator() == Allocator::kJemalloc) {
    // The calling thread's cache first: the blocks it holds are not free in any arena.
    mallctl(kFlushThreadCache, nullptr, nullptr, nullptr, 0);
    mallctl(kPurgeAllArenas, nullptr, nullptr, nullptr, 0);
    return;
  }
  // Every heap's whole free pages, not only the main heap's top (what glibc does on its own).
  malloc_trim(0);
}

}  // namespace staple::common
