#!/usr/bin/env python3
"""Staple's resident memory around a burst of client connections.

Starts `staple serve` on a free loopback port in a fresh temp directory, then:
  1. idle:   RSS once it answers /healthz;
  2. peak:   RSS (and the high-water mark VmHWM) with BURST_CONNECTIONS connections open, each of
             which sent one GET /healthz and read its answer (so each holds a served, idle
             keep-alive connection);
  3. after:  RSS once every connection is closed, staple_open_connections is back to 0 and the
             RSS stopped falling (the sweep trims freed memory within ~10 s).
Prints one Markdown table row and stops the server it started (by PID).

    bench/conn_burst.py                    (python3 only, no packages)

Environment (defaults in brackets):
  BURST_CONNECTIONS [20000]  BURST_SOURCES [8]: connections come from 127.0.0.2..127.0.0.(1+N), so
  that a per-address share (STAPLE_MAX_CONNECTIONS_PER_PEER in BURST_ENV) is not what limits them
  BURST_PROCESSES [4]        client processes (each needs BURST_CONNECTIONS/N descriptors)
  BENCH_BUILD_DIR [build]    where `staple` is
  BURST_ENV [""]             extra KEY=VALUE settings for staple, space-separated
                             (e.g. "STAPLE_MAX_CONNECTIONS=19000 STAPLE_THREADS=2")
The server's own open-file limit is the one this script runs with (staple raises its soft limit
to the hard limit at start-up); its default connection cap is that limit minus max(64, limit/8),
so a burst above the cap closes the longest-idle connections as it goes.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.status, response.read().decode()


def metric(port, name):
    _, text = get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1


def client(port, count, sources, ready, release):
    """Child process: opens `count` connections, one request each, then waits for `release`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    connections = []
    failed = 0
    for i in range(count):
        s = socket.socket()
        try:
            s.bind((sources[i % len(sources)], 0))
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            connections.append(s)
        except OSError:
            failed += 1
            s.close()
    answered = 0
    for s in connections:
        s.settimeout(10)
        try:
            if s.recv(4096).startswith(b"HTTP/1.1 200"):
                answered += 1
        except OSError:
            pass
    os.write(ready, f"{answered} {failed}\n".encode())
    os.read(release, 1)
    for s in connections:
        s.close()
    os._exit(0)


def main():
    build = os.environ.get("BENCH_BUILD_DIR", "build")
    if not os.path.isabs(build):
        build = os.path.join(ROOT, build)
    binary = os.path.join(build, "staple")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found: build the staple target first")
    total = int(os.environ.get("BURST_CONNECTIONS", "20000"))
    processes = int(os.environ.get("BURST_PROCESSES", "4"))
    sources = [f"127.0.0.{2 + i}" for i in range(int(os.environ.get("BURST_SOURCES", "8")))]

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="staple-burst-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STAPLE_", "OPENAI_"))}
    env.update({"STAPLE_ACCESS_LOG": "false", "OPENAI_API_KEY": "sk-burst-unused"})
    for item in os.environ.get("BURST_ENV", "").split():
        key, _, value = item.partition("=")
        env[key] = value
    log = open(os.path.join(workdir, "staple.log"), "w")
    server = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if get(port, "/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit(f"staple did not start; see {workdir}/staple.log")
            time.sleep(0.05)
        time.sleep(1)
        idle = rss_kib(server.pid)

        children = []
        for n in range(processes):
            ready_r, ready_w = os.pipe()
            release_r, release_w = os.pipe()
            count = total // processes + (1 if n < total % processes else 0)
            pid = os.fork()
            if pid == 0:
                client(port, count, sources, ready_w, release_r)
            children.append((pid, ready_r, release_w))
        answered = failed = 0
        for _, ready_r, _ in children:
            line = b""
            while not line.endswith(b"\n"):
                line += os.read(ready_r, 64)
            a, f = line.split()
            answered += int(a)
            failed += int(f)
        open_at_peak = metric(port, "staple_open_connections")
        peak = rss_kib(server.pid)
        high_water = rss_kib(server.pid, "VmHWM")

        for _, _, release_w in children:
            os.write(release_w, b"x")
        for pid, _, _ in children:
            os.waitpid(pid, 0)
        closed_at = time.monotonic()
        while metric(port, "staple_open_connections") > 1 and time.monotonic() < closed_at + 30:
            time.sleep(0.2)
        # The sweep trims within about ten seconds of the drop: wait until the RSS stops falling.
        after = rss_kib(server.pid)
        stable_since = time.monotonic()
        while time.monotonic() - stable_since < 5 and time.monotonic() < closed_at + 40:
            time.sleep(0.5)
            now = rss_kib(server.pid)
            if now < after - 64:
                stable_since = time.monotonic()
            after = min(after, now)
        settle = time.monotonic() - closed_at

        mib = lambda kib: f"{kib / 1024:.1f}"
        print("| connections | answered | failed | open at peak | idle RSS MiB | peak RSS MiB "
              "| VmHWM MiB | after-close RSS MiB | after / idle | settled in s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {total} | {answered} | {failed} | {open_at_peak:.0f} | {mib(idle)} | {mib(peak)} "
              f"| {mib(high_water)} | {mib(after)} | {after / idle:.2f} | {settle:.1f} |")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    main()
