#include "app/app.h"

// jemalloc's start-up options (read when the binary links jemalloc; see DESIGN.md §8). A background
// thread returns pages that stayed free for dirty_decay_ms, so the heap follows the load down
// without a request paying for it; muzzy_decay_ms:0 returns them with MADV_DONTNEED rather than
// MADV_FREE, so the RSS shows it. MALLOC_CONF in the environment still overrides these.
extern "C" {
// NOLINTNEXTLINE: the name and type are jemalloc's interface.
const char* malloc_conf = "background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0";
}

int main(int argc, char** argv) { return staple::app::Main(argc, argv); }
