#!/usr/bin/env python3
"""Where W1's CPU per request goes, natively: the exporter at W1's load under `perf record`.

W1's set-up (the fake with 10,000 groups, the exporter polling them at `rate_limit: 500`,
keep-alive), then `perf record -e cpu-clock --call-graph dwarf` on the exporter for a window,
then each of the exporter's samples put in one row by who spent it: the kernel (wake-ups, the
loopback TCP path), reqwest, hyper, tokio, or the exporter's own code. Rows add up to 100%.

    python3 scripts/profile_w1.py [--bin-dir target/release] [--seconds 40] [--https]

Needs `perf` (Debian `linux-perf`); CPU time is read from /proc as in W1, and each row's µs
are its share of that.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as b  # noqa: E402

# Each sample goes to exactly one row, so the rows add up to 100%: first by the task it ran in
# (the thread parked in tokio's driver, hyper's connection task, the poll task, the app owner's
# loop), then by the first frame from the task's root down that matches a row's pattern.
POLL_TASK = [
    ("reqwest", "sending (PendingRequest, execute_request: the redirect layer, URL parses)",
     r"reqwest::async_impl::client::(PendingRequest|Client::execute_request|Pending as)"),
    ("reqwest", "dropping the request and response", r"drop_in_place<reqwest"),
    ("ours", "parse_group_attr (the attributes)", r"timattr_exporter::client::parse_group_attr"),
    ("ours", "parse_envelope (ActionStatus, ErrorCode)", r"timattr_exporter::client::parse_envelope"),
    ("ours", "Store::apply (snapshot, hashes, diff)", r"timattr_exporter::store::Store::apply"),
    ("reqwest", "reading the body", r"reqwest::async_impl::(response|body)|http_body_util|hyper::body"),
    ("tokio", "the request's timeout timer", r"tokio::runtime::time|Timeout<T>.*reset"),
    ("ours", "metrics (the attempt observer)", r"ApiObserver|AppObserver|timattr_exporter::metrics::"),
    ("ours", "client (URL, query, UserSig, retries)", r"timattr_exporter::client::"),
]
OWNER = [
    ("ours", "rate limiter (acquire, registering its slot timer)", r"timattr_exporter::ratelimit::RateLimiter::acquire"),
    ("ours", "scheduler (next_due, pop_due)", r"timattr_exporter::schedule::Scheduler::"),
    ("tokio", "spawning the poll task", r"JoinSet.*spawn|task::spawn"),
    ("ours", "reaping ended polls", r"Owner::(reap|ended)"),
]


OWNERS = ["kernel", "reqwest", "hyper", "tls", "tokio", "ours"]


# The kernel's work, named by the syscall it ran in: the libc wrapper, the first user-space frame
# under the kernel's (a wake-up that preempts the sender inside `writev` still counts as sending).
SYSCALLS = [
    (r"epoll_wait", "parked in epoll_wait (sleep, wake-up, context switch)"),
    (r"writev|write|send", "sending: the request onto loopback TCP (the receiver's TCP path runs here too), and eventfd writes"),
    (r"recv|read", "receiving: the answer off the socket"),
]


def classify(frames):
    """(owner, row) of one sample; `frames` are (address, symbol) from the leaf to the root."""
    syms = [sym for _, sym in frames]
    text = " | ".join(syms)
    # Kernel time first, whichever task made the syscall: a kernel frame has a kernel address.
    if frames[0][0].startswith("ffffffff"):
        wrapper = next((sym for addr, sym in frames if not addr.startswith("ffffffff")), "")
        for pattern, row in SYSCALLS:
            if re.search(pattern, wrapper):
                return "kernel", row
        return "kernel", "other (page faults, interrupts)"

    def first(rows, task):
        for sym in reversed(syms):
            for owner, row, pattern in rows:
                if re.search(pattern, sym):
                    return owner, row
        return ("ours" if task != "tokio" else "tokio"), f"{task}: the rest"

    if "current_thread::Context::park" in text:
        return "tokio", "the driver: timers and I/O readiness"
    if "UpgradeableConnection" in text:
        # rustls's own frames (not the stream wrappers every connection goes through).
        if any(re.search(r"^<?(rustls|ring)::|aws_lc|ring_core", sym) for sym in syms):
            return "tls", "rustls: record encryption, decryption and buffers"
        return "hyper", "the connection task: HTTP/1 encoding and parsing"
    if "timattr_exporter::app::Owner::dispatch::{{closure}}" in text:
        return first(POLL_TASK, "poll task")
    if "timattr_exporter::app::Owner::run" in text:
        return first(OWNER, "owner loop")
    return "tokio", "scheduler and other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--freq", type=int, default=4999)
    ap.add_argument("--https", action="store_true", help="nginx terminating TLS in front of the fake, as w1https")
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--keep", help="keep perf.data at this path")
    args = ap.parse_args()
    bins = {
        "exporter": os.path.join(args.bin_dir, "timattr_exporter"),
        "fake": os.path.join(args.bin_dir, "timattr_fake_api"),
    }
    env = dict(os.environ)
    env.setdefault(b.KEY_ENV, "timattr-bench-key-not-a-secret")
    env["RUST_LOG"] = "warn"
    with tempfile.TemporaryDirectory() as wd:
        data = args.keep or os.path.join(wd, "perf.data")
        with b.Procs(wd) as ctx:
            _, fake_url = b.start_fake(ctx, bins, env, 10_000)
            api_url, extra = fake_url, ""
            if args.https:
                _, api_url, ca = b.start_nginx_tls(ctx, wd, fake_url, args.nginx)
                extra = f"    tls_ca_file: {ca}\n"
            cfg = b.write_config(wd, "p", api_url, 10_000, "5s", 500, extra=extra)
            exp, _ = b.start_exporter(ctx, bins, env, cfg)
            # Past the first cycle (10,000 groups at ~495/s), as W1's steady window.
            time.sleep(26)
            c0, n0 = b.cpu_seconds(exp.pid), b.fake_total(fake_url)[0]
            subprocess.run(
                ["perf", "record", "-e", "cpu-clock", "-F", str(args.freq), "--call-graph", "dwarf,16384",
                 "-o", data, "-p", str(exp.pid), "--", "sleep", str(args.seconds)],
                capture_output=True, check=True)
            c1, n1 = b.cpu_seconds(exp.pid), b.fake_total(fake_url)[0]
        # One frame a line (address, symbol), inlined frames included; a blank line between samples.
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym"],
            capture_output=True, text=True, check=True).stdout
    requests = n1 - n0
    us = (c1 - c0) / max(1, requests) * 1e6
    counts = collections.Counter()
    for block in script.split("\n\n"):
        frames = [tuple(line.strip().split(None, 1)) for line in block.splitlines() if line.strip()]
        frames = [f if len(f) == 2 else (f[0], "[unknown]") for f in frames]
        if frames:
            counts[classify(frames)] += 1
    total = sum(counts.values())
    print(f"requests {requests} in {args.seconds:.0f} s ({requests / args.seconds:.0f}/s); "
          f"exporter CPU {us:.1f} µs per request; {total} samples; load {os.getloadavg()[0]:.2f}")
    print()
    print("| whose | part of a request | share of samples | µs per request |")
    print("|---|---|---|---|")
    by_owner = collections.Counter()
    for (owner, row), n in sorted(counts.items(), key=lambda kv: (OWNERS.index(kv[0][0]), -kv[1])):
        by_owner[owner] += n
        print(f"| {owner} | {row} | {100 * n / total:.1f}% | {us * n / total:.1f} |")
    for owner in OWNERS:
        n = by_owner[owner]
        print(f"| **{owner}** | **all** | **{100 * n / total:.1f}%** | **{us * n / total:.1f}** |")
    print(json.dumps({"requests": requests, "us_per_request": round(us, 1), "samples": total,
                      "shares": {f"{o}: {r}": round(100 * n / total, 2) for (o, r), n in counts.items()}}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
