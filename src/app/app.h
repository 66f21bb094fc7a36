#pragma once

namespace staple::app {

// The whole program: parses the command line (`staple serve [flags]`), loads and validates the
// configuration, wires the subsystems, serves until SIGINT/SIGTERM, then shuts down gracefully.
// Also `staple keys …` and `staple backup PATH`.
// Returns the process exit code: 0 after a clean shutdown, 2 for invalid configuration or usage,
// 1 when start-up fails (e.g. the port is taken).
int Main(int argc, char** argv);

}  // namespace staple::app
