#pragma once

namespace staple::common {

// Which allocator serves malloc in this process. The staple binary links jemalloc (DESIGN.md §8);
// test binaries and sanitizer builds run on glibc's malloc. Detected at run time, so one library
// serves both.
enum class Allocator { kGlibc, kJemalloc };

Allocator CurrentAllocator();
const char* AllocatorName();

// Start-up tuning for glibc's malloc (keep freed memory instead of returning and re-faulting it on
// every request); nothing to do for jemalloc, which the binary configures through `malloc_conf`.
void TuneAllocator();

// Gives the whole free pages of every heap back to the system now (after a burst of connections
// closed), with the blocks cached by the calling thread (jemalloc's thread cache; call it on every
// thread that allocates). jemalloc also does this on its own, over its decay period, from a
// background thread.
void ReturnFreedMemory();

}  // namespace staple::common
