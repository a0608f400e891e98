#!/usr/bin/env python3
"""Instructions per request of the exporter at a W1-like load, under callgrind: a count that
does not move with the machine's load, for A/B comparisons of two builds (W1's CPU seconds vary
by ±25% between runs here; this varies by well under 1%).

The fake with 10,000 groups, the exporter polling them at `rate_limit: 100` (callgrind runs it
~50x slower), counters zeroed after a 20 s warm-up, dumped after `--seconds`, divided by the
requests the fake saw in between. User-space instructions only; the kernel's share is not counted.

    python3 scripts/instructions_w1.py [--bin-dir target/release] [--seconds 20]

Needs valgrind (callgrind_control).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as b  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)
    with tempfile.TemporaryDirectory() as wd:
        wrapper = os.path.join(wd, "timattr_exporter")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={wd}/cg.%p "
                    f"{bin_dir}/timattr_exporter \"$@\"\n")
        os.chmod(wrapper, 0o755)
        bins = {"exporter": wrapper, "fake": os.path.join(bin_dir, "timattr_fake_api")}
        env = dict(os.environ)
        env.setdefault(b.KEY_ENV, "timattr-bench-key-not-a-secret")
        env["RUST_LOG"] = "warn"
        with b.Procs(wd) as ctx:
            _, fake_url = b.start_fake(ctx, bins, env, 10_000)
            cfg = b.write_config(wd, "p", fake_url, 10_000, "5s", 100)
            exp, _ = b.start_exporter(ctx, bins, env, cfg)
            time.sleep(20)
            subprocess.run(["callgrind_control", "-z", str(exp.pid)], capture_output=True, check=True)
            n0 = b.fake_total(fake_url)[0]
            time.sleep(args.seconds)
            subprocess.run(["callgrind_control", "-d", str(exp.pid)], capture_output=True, check=True)
            n1 = b.fake_total(fake_url)[0]
            time.sleep(1)
            # The dump of the window: the first numbered file (`cg.PID.1`).
            dumps = sorted(glob.glob(os.path.join(wd, "cg.*.1")))
            if not dumps:
                sys.exit("no callgrind dump was written")
            total = None
            with open(dumps[0]) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
                        break
    if total is None:
        sys.exit("the callgrind dump has no summary line")
    requests = n1 - n0
    print(f"{bin_dir}: {requests} requests in {args.seconds:.0f} s, "
          f"{total / max(1, requests):,.0f} instructions per request")


if __name__ == "__main__":
    main()
