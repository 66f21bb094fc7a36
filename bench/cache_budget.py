#!/usr/bin/env python3
"""Staple's resident memory against its cache budget (STAPLE_CACHE_MB).

Starts fake_openai and staple (SQLite store, no rate limits) on free loopback ports in a fresh
temp directory, then drives CONVERSATIONS conversations x TURNS turns through the seed endpoint,
round robin (turn 1 of every conversation, then turn 2 of every one...), so every turn reads a
history that the caches may or may not hold. Samples staple's VmRSS every 0.5 s and prints the
budget, the peak and final RSS, and the target (2 x budget + 32 MiB). Stops what it started.

  bench/cache_budget.py [--cache-mb 64] [--conversations 5000] [--turns 20] [--clients 8]
                        [--build-dir build] [--prompt-bytes 200]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, path="/healthz", timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not become ready")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache-mb", type=int, default=64)
    p.add_argument("--conversations", type=int, default=5000)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--prompt-bytes", type=int, default=200)
    p.add_argument("--build-dir", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    p.add_argument("--extra-env", action="append", default=[], help="NAME=VALUE for staple")
    args = p.parse_args()
    build = os.path.abspath(args.build_dir)

    tmp = tempfile.TemporaryDirectory(prefix="staple-cache-")
    fake_port, staple_port = free_port(), free_port()
    procs = []
    try:
        fake = subprocess.Popen([os.path.join(build, "fake_openai"), "--port", str(fake_port),
                                 "--record", "0"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(fake)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STAPLE_", "OPENAI_"))}
        env.update({
            "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
            "OPENAI_API_KEY": "sk-bench",
            "STAPLE_DATABASE_URL": f"sqlite:///{tmp.name}/chat.db",
            "STAPLE_DEFAULT_LIMITS": "",
            "STAPLE_COMPLETION_LIMIT": "",
            "STAPLE_SQLITE_SYNCHRONOUS": "normal",
            "STAPLE_CACHE_MB": str(args.cache_mb),
        })
        for item in args.extra_env:
            name, _, value = item.partition("=")
            env[name] = value
        staple = subprocess.Popen([os.path.join(build, "staple"), "serve", "--host", "127.0.0.1",
                                   "--port", str(staple_port)], env=env, cwd=tmp.name,
                                  stdout=subprocess.DEVNULL, stderr=open(
                                      os.path.join(tmp.name, "staple.log"), "w"))
        procs.append(staple)
        wait_ready(fake_port, "/v1/models")
        wait_ready(staple_port)
        idle_kib = rss_kib(staple.pid)

        peak = [idle_kib]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(staple.pid))
                done.wait(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        errors = [0]
        filler = "x" * max(0, args.prompt_bytes - 20)

        def client(index):
            conn = http.client.HTTPConnection("127.0.0.1", staple_port, timeout=30)
            for turn in range(args.turns):
                for conv in range(index, args.conversations, args.clients):
                    body = json.dumps({"prompt": f"turn {turn} {filler}",
                                       "user_id": f"conversation-{conv:06d}"})
                    conn.request("POST", "/openai-completion", body,
                                 {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        errors[0] += 1

        started = time.time()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        done.set()
        sampler.join()
        final_kib = rss_kib(staple.pid)
        hwm_kib = rss_kib(staple.pid, "VmHWM")
        budget = args.cache_mb
        target = 2 * budget + 32
        requests = args.conversations * args.turns
        print(f"| STAPLE_CACHE_MB | conversations x turns | requests/s | idle RSS | peak RSS "
              f"(VmHWM) | final RSS | target 2xbudget+32 | errors |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {budget} | {args.conversations} x {args.turns} | {requests / elapsed:.0f} | "
              f"{idle_kib / 1024:.1f} MiB | {max(peak[0], hwm_kib) / 1024:.1f} MiB | "
              f"{final_kib / 1024:.1f} MiB | {target} MiB | {errors[0]} |")
        return 0 if errors[0] == 0 else 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
