#!/usr/bin/env python3
"""End-to-end benchmark workloads of timattr_exporter (issue 5); run through scripts/bench.sh.

Everything runs on this machine against the fake Tencent Chat API (`timattr_fake_api`), on
ports picked free at run time. Each workload starts its own processes and stops them. Figures are
measured, never computed from settings:

  w1  CPU seconds per 1,000 upstream requests and peak RSS: the exporter polling as fast as a
      high rate limit allows, vs blackbox_exporter driven at the same rate through /probe.
  w2  quota fidelity at the fake: max requests in any 1-second window, throughput, with 1/2/4
      shards sharing rate_limit R.
  w3  schedule: G groups at interval I where G/I = R: startup windows, per-group interval jitter.
  w4  RSS after one full cycle with N groups of 4 attributes (value_hashes: per_key).
  w5  /metrics at 10,000 and 100,000 groups: render time, body size plain and gzip, and polling
      rate and lag while scrapes run back to back; peak RSS one scrape adds (plain, gzip) and
      that 8 parallel scrapes add.
  w1https  w1 over TLS: nginx with a test-CA leaf in front of the fake (tls_ca_file, ca_file).
  w10 at N groups: state-file writes and the polls around them, reload, shutdown, discovery.

Prints one table per workload and writes all figures as JSON (--json).
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

APP = 1400000001
KEY_ENV = "TIMATTR_BENCH_SECRET_KEY"
API_PATH = "/v4/group_open_attr_http_svc/get_group_attr"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes and /proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kib(pid, field):
    """VmRSS or VmHWM (peak RSS) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Procs:
    """Processes started by a workload; all stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start(self, args, name, env=None, read_stdout=False):
        # Output goes to files in the work directory (an unread pipe could fill and block).
        log = open(os.path.join(self.workdir, f"{name}.log"), "a")
        out = subprocess.PIPE if read_stdout else log
        p = subprocess.Popen(args, stdout=out, stderr=log, env=env, text=True)
        self.procs.append(p)
        return p


def wait_for(cond, timeout, what, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def http_get(url, headers=None, timeout=60):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        # Header names lower-cased: hyper sends them so, urllib keeps them as sent.
        return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}


# ---------------------------------------------------------------- the fake and the exporter


def write_scenario(workdir, groups, rate_limit):
    """A fake with `groups` groups of 4 attributes of 16 bytes; `rate_limit` None = unlimited."""
    rl = "null" if rate_limit is None else str(rate_limit)
    path = os.path.join(workdir, f"scenario-{groups}-{rl}.yml")
    with open(path, "w") as f:
        f.write(
            f"""apps:
  - sdkappid: {APP}
    identifier: administrator
    secret_key_env: {KEY_ENV}
    rate_limits: {{get_group_attr: {rl}, get_appid_group_list: null, writes: null}}
    generate:
      - {{count: {groups}, prefix: "@TGS#bench", attrs: 4, value_bytes: 16, type: Public}}
"""
        )
    return path


def start_fake(ctx, bins, env, groups, rate_limit=None):
    scenario = write_scenario(ctx.workdir, groups, rate_limit)
    p = ctx.start(
        [bins["fake"], "--scenario", scenario, "--listen", "127.0.0.1:0"], "fake", env=env,
        read_stdout=True,
    )
    line = p.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        raise RuntimeError(f"the fake did not start: {line!r}")
    return p, m.group(1).rstrip("/")


def write_config(workdir, name, fake_url, groups, interval, rate_limit, max_concurrency=64, extra="", top=""):
    path = os.path.join(workdir, f"{name}.yml")
    with open(path, "w") as f:
        f.write(
            f"""poll_interval: {interval}
value_hashes: per_key
{top}apps:
  - sdkappid: {APP}
    endpoint: {fake_url}/
    identifier: administrator
    secret_key_env: {KEY_ENV}
    rate_limit: {rate_limit}
    max_concurrency: {max_concurrency}
    timeout: 5s
{extra}    groups:
"""
        )
        for i in range(groups):
            f.write(f'      - "@TGS#bench{i}"\n')
    return path


def start_exporter(ctx, bins, env, config, shard=None, name="exporter", extra=(), wait_ready=True):
    port = free_port()
    args = [
        bins["exporter"],
        "--config.file",
        config,
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--log.level",
        "warn",
    ]
    if shard is not None:
        args += ["--shard", str(shard[0]), "--total-shards", str(shard[1])]
    args += list(extra)
    p = ctx.start(args, name, env=env)
    url = f"http://127.0.0.1:{port}"
    if wait_ready:
        wait_for(lambda: http_get(url + "/-/ready")[0] == 200, 120, f"{name} ready")
    return p, url


def fake_total(fake_url):
    """get_group_attr requests the fake has seen for the app, and how many groups they named."""
    _, body, _ = http_get(fake_url + "/fake/counts")
    app = json.loads(body)["apps"].get(str(APP), {})
    return app.get("by_api", {}).get("get_group_attr", {}).get("total", 0), app.get("by_group", {})


def fake_requests(fake_url, groups=False):
    return fake_requests_api(fake_url, "get_group_attr", groups)


def fake_requests_api(fake_url, api, groups=False):
    q = f"sdkappid={APP}&api={api}" + ("&groups=1" if groups else "")
    _, body, _ = http_get(f"{fake_url}/fake/requests?{q}")
    return json.loads(body)


def max_window(times, width=1.0):
    """The most arrivals in any half-open window [t, t + width) (sliding over every arrival)."""
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while j < len(times) and times[j] < times[i] + width:
            j += 1
        best = max(best, j - i)
    return best


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


# ---------------------------------------------------------------- workloads


def make_test_pki(workdir):
    """A test CA and a leaf for 127.0.0.1 signed by it (ECDSA P-256), made with openssl."""
    d = os.path.join(workdir, "pki")
    if os.path.exists(os.path.join(d, "leaf.pem")):
        return d
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=timattr bench test CA")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                "basicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")
    return d


def start_nginx_tls(ctx, workdir, fake_url, nginx="nginx"):
    """nginx terminating TLS on loopback in front of the fake (keep-alive to the fake); returns
    (process, https base URL, CA file)."""
    pki = make_test_pki(workdir)
    port = free_port()
    nd = os.path.join(workdir, f"nginx-{port}")
    os.makedirs(nd, exist_ok=True)
    fake_hostport = fake_url.split("://", 1)[1]
    conf = os.path.join(nd, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {nd}/nginx.pid;
error_log {nd}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {nd}/client;
  proxy_temp_path {nd}/proxy;
  fastcgi_temp_path {nd}/fastcgi;
  uwsgi_temp_path {nd}/uwsgi;
  scgi_temp_path {nd}/scgi;
  upstream fake {{ server {fake_hostport}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {pki}/leaf.pem;
    ssl_certificate_key {pki}/leaf.key;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    p = ctx.start([nginx, "-p", nd, "-c", conf, "-g", "daemon off;"], f"nginx-{port}")
    url = f"https://127.0.0.1:{port}"
    ca = os.path.join(pki, "ca.pem")
    ctx_ssl = __import__("ssl").create_default_context(cafile=ca)

    def up():
        req = urllib.request.Request(url + "/fake/counts")
        with urllib.request.urlopen(req, timeout=5, context=ctx_ssl) as r:
            return r.status == 200
    wait_for(up, 20, "nginx (TLS) up")
    return p, url, ca


def w1_cost(bins, env, workdir, args, https=False):
    """Exporter vs blackbox_exporter: CPU per 1,000 upstream requests and peak RSS. With https,
    both reach the fake through nginx terminating TLS with a leaf signed by a test CA (the
    exporter trusting it through the app's `tls_ca_file`, blackbox through its module's
    `tls_config.ca_file`)."""
    rate, window, warm = args.w1_rate, args.w1_window, 5
    runs = []
    for run in range(args.w1_runs):
        row = {}
        # The exporter: 10,000 groups wanting 2,000 req/s, capped by rate_limit.
        with Procs(workdir) as ctx:
            _, fake_url = start_fake(ctx, bins, env, 10_000)
            api_url, tls_extra = fake_url, ""
            if https:
                _, api_url, ca = start_nginx_tls(ctx, workdir, fake_url, args.nginx)
                tls_extra = f"    tls_ca_file: {ca}\n"
            cfg = write_config(workdir, "w1", api_url, 10_000, "5s", rate, extra=tls_extra)
            exp, _ = start_exporter(ctx, bins, env, cfg)
            started = time.monotonic()
            time.sleep(warm)
            # First window: the first cycle, where each poll also creates its group's state
            # (10,000 groups at ~500/s take ~20 s to visit once).
            c0, n0 = cpu_seconds(exp.pid), fake_total(fake_url)[0]
            time.sleep(window)
            c1, n1 = cpu_seconds(exp.pid), fake_total(fake_url)[0]
            row["exp_first_cycle_reqs_per_s"] = (n1 - n0) / window
            row["exp_first_cycle_cpu_per_1k"] = (c1 - c0) / max(1, n1 - n0) * 1000
            # Second window: steady state, once every group has been polled at least once, which
            # is what the exporter does for the rest of its life.
            cycle = 10_000 / max(1.0, row["exp_first_cycle_reqs_per_s"])
            time.sleep(max(0.0, started + cycle + warm - time.monotonic()))
            c0, n0 = cpu_seconds(exp.pid), fake_total(fake_url)[0]
            time.sleep(window)
            c1, n1 = cpu_seconds(exp.pid), fake_total(fake_url)[0]
            row["exp_reqs_per_s"] = (n1 - n0) / window
            row["exp_cpu_per_1k"] = (c1 - c0) / max(1, n1 - n0) * 1000
            row["exp_hwm_kib"] = mem_kib(exp.pid, "VmHWM")
        # blackbox_exporter, one probe per upstream request, at the rate the exporter reached.
        with Procs(workdir) as ctx:
            _, fake_url = start_fake(ctx, bins, env, 10_000)
            api_url, bb_tls = fake_url, ""
            if https:
                _, api_url, ca = start_nginx_tls(ctx, workdir, fake_url, args.nginx)
                bb_tls = f"      tls_config:\n        ca_file: {ca}\n"
            sig = subprocess.run(
                [bins["usersig"], str(APP), "administrator", "86400"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout.strip()
            target = (
                f"{api_url}{API_PATH}?sdkappid={APP}&identifier=administrator"
                f"&usersig={urllib.parse.quote(sig, safe='')}&random=12345&contenttype=json"
            )
            bb_cfg = os.path.join(workdir, "blackbox.yml")
            with open(bb_cfg, "w") as f:
                f.write(
                    """modules:
  tim_get_group_attr:
    prober: http
    timeout: 5s
    http:
      method: POST
      headers:
        Content-Type: application/json
      body: '{"GroupId":"@TGS#bench0"}'
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp:
        - '"ErrorCode":0'
"""
                    + bb_tls
                )
            port = free_port()
            bb = ctx.start(
                [
                    bins["blackbox"],
                    f"--config.file={bb_cfg}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                "blackbox",
            )
            probe = (
                f"http://127.0.0.1:{port}/probe?module=tim_get_group_attr&target="
                + urllib.parse.quote(target, safe="")
            )
            wait_for(lambda: b"probe_success 1" in http_get(probe)[1], 30, "blackbox probe ok")
            bb_rate = row["exp_reqs_per_s"]
            lg = subprocess.Popen(
                [bins["loadgen"], probe, f"{bb_rate:.1f}", str(warm + window + 2), "64"],
                stdout=subprocess.PIPE, text=True,
            )
            time.sleep(warm)
            c0, n0 = cpu_seconds(bb.pid), fake_total(fake_url)[0]
            time.sleep(window)
            c1, n1 = cpu_seconds(bb.pid), fake_total(fake_url)[0]
            out, _ = lg.communicate(timeout=60)
            lg_summary = json.loads(out.strip().splitlines()[-1])
            row["bb_reqs_per_s"] = (n1 - n0) / window
            row["bb_cpu_per_1k"] = (c1 - c0) / max(1, n1 - n0) * 1000
            row["bb_hwm_kib"] = mem_kib(bb.pid, "VmHWM")
            row["bb_loadgen"] = lg_summary
        row["ratio"] = row["exp_cpu_per_1k"] / row["bb_cpu_per_1k"]
        row["ratio_first_cycle"] = row["exp_first_cycle_cpu_per_1k"] / row["bb_cpu_per_1k"]
        runs.append(row)
        print(f"  w1 run {run + 1}: {json.dumps(row)}", file=sys.stderr)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "bb_loadgen"}
    return {"runs": runs, "median": med, "rate_limit": rate, "window_s": window,
            "transport": "https (nginx TLS in front of the fake)" if https else "plain http to the fake"}


def w1_https(bins, env, workdir, args):
    return w1_cost(bins, env, workdir, args, https=True)


def w2_quota(bins, env, workdir, args):
    """rate_limit R shared by 1, 2 and 4 shards; measured at the fake (which enforces R too)."""
    r, groups, interval, window = 200, 4_000, "10s", args.w2_window
    out = []
    for shards in (1, 2, 4):
        with Procs(workdir) as ctx:
            _, fake_url = start_fake(ctx, bins, env, groups, rate_limit=r)
            cfg = write_config(workdir, f"w2-{shards}", fake_url, groups, interval, r, 16)
            exps = [
                start_exporter(ctx, bins, env, cfg, (i, shards) if shards > 1 else None, f"w2-{i}")
                for i in range(shards)
            ]
            time.sleep(window)
            reqs = fake_requests(fake_url)["seconds"]
            counts = json.loads(http_get(fake_url + "/fake/counts")[1])
            rejected = counts["apps"][str(APP)]["by_api"]["get_group_attr"]["by_outcome"].get("60007", 0)
            del exps
        reqs.sort()
        # Throughput over whole seconds from the first arrival + 2 s (every shard is up by
        # then) to the last arrival: the startup ramp is not the quota's fault.
        t0 = reqs[0] + 2
        steady = [t for t in reqs if t >= t0]
        span = steady[-1] - steady[0]
        row = {
            "shards": shards,
            "requests": len(reqs),
            "max_per_1s_window": max_window(reqs),
            "throughput_per_s": (len(steady) - 1) / span if span > 0 else 0,
            "rejected_60007": rejected,
        }
        row["throughput_ratio"] = row["throughput_per_s"] / r
        out.append(row)
        print(f"  w2: {json.dumps(row)}", file=sys.stderr)
    return {"rate_limit": r, "groups": groups, "interval": interval, "window_s": window, "rows": out}


def w3_schedule(bins, env, workdir, args):
    """G groups at interval I with G/I = R exactly: startup windows and per-group jitter."""
    r = 200
    groups, interval = args.w3_groups, args.w3_interval
    seconds = args.w3_cycles * interval + 10
    with Procs(workdir) as ctx:
        _, fake_url = start_fake(ctx, bins, env, groups, rate_limit=r)
        cfg = write_config(workdir, "w3", fake_url, groups, f"{interval}s", r, 16)
        _, exp_url = start_exporter(ctx, bins, env, cfg)
        started = time.monotonic()
        time.sleep(seconds)
        data = fake_requests(fake_url, groups=True)
        counts = json.loads(http_get(fake_url + "/fake/counts")[1])
        rejected = counts["apps"][str(APP)]["by_api"]["get_group_attr"]["by_outcome"].get("60007", 0)
        metrics = http_get(exp_url + "/metrics")[1].decode()
        lag = re.search(r"^timattr_poll_lag_seconds\{[^}]*\} (\S+)$", metrics, re.M)
    times, gids = data["seconds"], data["groups"]
    first = min(times)
    per_group = {}
    for t, g in zip(times, gids):
        per_group.setdefault(g, []).append(t)
    # Intervals that start after the first cycle (every group's first poll is at its phase).
    jitter, intervals = [], []
    for ts in per_group.values():
        ts.sort()
        for a, b in zip(ts, ts[1:]):
            if a >= first + interval:
                intervals.append(b - a)
                jitter.append(abs(b - a - interval))
    startup = [t for t in times if t < first + interval]
    row = {
        "groups": groups,
        "interval_s": interval,
        "rate_limit": r,
        "ran_s": round(time.monotonic() - started, 1),
        "requests": len(times),
        "max_per_1s_window_startup": max_window(startup),
        "max_per_1s_window_all": max_window(times),
        "intervals_measured": len(intervals),
        "jitter_p50_s": percentile(jitter, 50),
        "jitter_p99_s": percentile(jitter, 99),
        "jitter_max_s": max(jitter) if jitter else float("nan"),
        "interval_median_s": percentile(intervals, 50),
        "rejected_60007": rejected,
        "poll_lag_at_end_s": float(lag.group(1)) if lag else None,
    }
    print(f"  w3: {json.dumps(row)}", file=sys.stderr)
    return row


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the next peak is one scrape's."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def scrape_memory(exp, exp_url, parallel=8):
    """Peak RSS above the RSS before it, in KiB, for one plain scrape, one gzip scrape, and
    `parallel` plain scrapes at once (each run twice, the smaller kept: the first may grow the
    allocator's pools for good)."""
    def peak(headers, n):
        added = []
        for _ in range(2):
            time.sleep(0.5)
            reset_hwm(exp.pid)
            base = mem_kib(exp.pid, "VmRSS")
            threads = [threading.Thread(target=http_get, args=(exp_url + "/metrics", headers, 120)) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            added.append(mem_kib(exp.pid, "VmHWM") - base)
        return min(added)
    return {
        "scrape_added_peak_kib": peak({}, 1),
        "scrape_gzip_added_peak_kib": peak({"Accept-Encoding": "gzip"}, 1),
        f"scrape_{parallel}_parallel_added_peak_kib": peak({}, parallel),
    }


def curl_times(exp_url, runs=7):
    """Median whole-response time of /metrics read by curl into /dev/null (a client much faster
    than Python's, so closer to the server's own time), plain and gzip (not decoded)."""
    def median(headers):
        times = []
        for _ in range(runs):
            out = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", *headers, exp_url + "/metrics"],
                check=True, capture_output=True, text=True,
            ).stdout
            times.append(float(out))
        return statistics.median(times) * 1000
    return {
        "curl_median_ms": median([]),
        "curl_gzip_median_ms": median(["-H", "Accept-Encoding: gzip"]),
    }


def metric_value(text, name):
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def w4_w5_memory_scrape(bins, env, workdir, args):
    """RSS after one full cycle per group count; /metrics render time and size; polling under
    back-to-back scrapes."""
    rows = []
    for n in [1] + args.w4_sizes:
        # Demand of n/interval, at most 2,000 req/s so a cycle of 100,000 takes 50 s; the rate
        # limit is twice the demand, so polling keeps its schedule unless something stalls it.
        interval = max(5, n // 2000)
        rate = max(100, 2 * n / interval)
        with Procs(workdir) as ctx:
            _, fake_url = start_fake(ctx, bins, env, max(n, 1))
            cfg = write_config(workdir, f"w4-{n}", fake_url, n, f"{interval}s", rate, 64)
            exp, exp_url = start_exporter(ctx, bins, env, cfg)
            ready_rss = mem_kib(exp.pid, "VmRSS")
            t0 = time.monotonic()
            wait_for(
                lambda: len(fake_total(fake_url)[1]) >= n,
                interval * 2 + 60,
                f"every one of {n} groups polled",
                every=max(1.0, interval / 10),
            )
            cycle_s = time.monotonic() - t0
            time.sleep(1)
            row = {
                "groups": n,
                "interval_s": interval,
                "rate_limit": rate,
                "rss_ready_kib": ready_rss,
                "rss_after_cycle_kib": mem_kib(exp.pid, "VmRSS"),
                "hwm_kib": mem_kib(exp.pid, "VmHWM"),
                "first_cycle_s": round(cycle_s, 1),
            }
            if n >= 10_000:
                # The peak over every scrape below, above the RSS before the first one: what
                # scrapes leave resident (allocator pools) counts too.
                reset_hwm(exp.pid)
                before_scrapes = mem_kib(exp.pid, "VmRSS")
                row.update(scrape(exp, exp_url, fake_url, args.w5_scrapes, n / interval))
                row.update(scrape_memory(exp, exp_url))
                row.update(curl_times(exp_url))
                row["rss_before_scrapes_kib"] = before_scrapes
                row["scrapes_added_peak_kib"] = mem_kib(exp.pid, "VmHWM") - before_scrapes
            rows.append(row)
            print(f"  w4/w5: {json.dumps(row)}", file=sys.stderr)
    base = rows[0]["rss_after_cycle_kib"]
    for row in rows[1:]:
        row["kib_per_group"] = (row["rss_after_cycle_kib"] - base) / row["groups"]
    return {"baseline_kib": base, "rows": rows}


def scrape(exp, exp_url, fake_url, scrapes, demand):
    """Median /metrics time over back-to-back scrapes, sizes, and the polling rate meanwhile."""
    # Polling before the scrapes: the rate over 5 s.
    n0, t0 = fake_total(fake_url)[0], time.monotonic()
    time.sleep(5)
    n1, t1 = fake_total(fake_url)[0], time.monotonic()
    before_rate = (n1 - n0) / (t1 - t0)
    _, gz_body, gz_headers = http_get(exp_url + "/metrics", {"Accept-Encoding": "gzip"})
    gz_ok = gz_headers.get("content-encoding") == "gzip"
    durations, sizes, gz_durations = [], [], []
    cpu0 = cpu_seconds(exp.pid)
    n0, t0 = fake_total(fake_url)[0], time.monotonic()
    for _ in range(scrapes):
        s = time.perf_counter()
        _, body, _ = http_get(exp_url + "/metrics")
        durations.append(time.perf_counter() - s)
        sizes.append(len(body))
    for _ in range(max(3, scrapes // 4)):
        s = time.perf_counter()
        http_get(exp_url + "/metrics", {"Accept-Encoding": "gzip"})
        gz_durations.append(time.perf_counter() - s)
    n1, t1 = fake_total(fake_url)[0], time.monotonic()
    cpu1 = cpu_seconds(exp.pid)
    text = http_get(exp_url + "/metrics")[1].decode()
    return {
        "scrape_median_ms": statistics.median(durations) * 1000,
        "scrape_gzip_median_ms": statistics.median(gz_durations) * 1000,
        "scrapes": len(durations) + len(gz_durations),
        "body_bytes": statistics.median(sizes),
        "body_gzip_bytes": len(gz_body) if gz_ok else None,
        "series_per_group_check": text.count("\n"),
        "poll_rate_demand": demand,
        "poll_rate_before": before_rate,
        "poll_rate_during_scrapes": (n1 - n0) / (t1 - t0),
        "scrape_period_s": t1 - t0,
        "exporter_cpu_s_during_scrapes": cpu1 - cpu0,
        "poll_lag_s_after": metric_value(text, "timattr_poll_lag_seconds"),
    }


# ---------------------------------------------------------------- tables


def table(title, header, rows):
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def f(x, d=2):
    return "n/a" if x is None else f"{x:.{d}f}"


def report(res):
    if "w10" in res:
        print("\nW10 state file, reload, discovery")
        print(json.dumps(res["w10"], indent=1))
    if "w9" in res:
        print("\nW9 basic auth under a password-guessing flood")
        print(json.dumps(res["w9"], indent=1))
    if "w8" in res:
        print("\nW8 callbacks against an exhausted quota")
        print(json.dumps(res["w8"], indent=1))
    if "w7" in res:
        print("W7 push (callbacks):")
        print(json.dumps(res["w7"], indent=1))
    for key in ("w1", "w1https"):
        if key not in res:
            continue
        w = res[key]
        m = w["median"]
        table(
            f"W1 cost per poll, {w['transport']} (median of {len(w['runs'])} runs, {w['window_s']} s windows)",
            ["process", "upstream req/s", "CPU s / 1,000 req", "peak RSS MiB"],
            [
                ["timattr_exporter, steady state", f(m["exp_reqs_per_s"], 0), f(m["exp_cpu_per_1k"], 3), f(m["exp_hwm_kib"] / 1024, 1)],
                ["timattr_exporter, first cycle", f(m["exp_first_cycle_reqs_per_s"], 0), f(m["exp_first_cycle_cpu_per_1k"], 3), ""],
                ["blackbox_exporter", f(m["bb_reqs_per_s"], 0), f(m["bb_cpu_per_1k"], 3), f(m["bb_hwm_kib"] / 1024, 1)],
            ],
        )
        print(f"\nratio exporter/blackbox CPU per request (median of per-run ratios): {m['ratio']:.3f} "
              f"(target <= {0.05 if key == 'w1https' else 0.08}); per run: {', '.join(f(r['ratio'], 3) for r in w['runs'])}")
        print(f"first cycle instead of steady state: {m['ratio_first_cycle']:.3f}; per run: "
              f"{', '.join(f(r['ratio_first_cycle'], 3) for r in w['runs'])}")
    if "w2" in res:
        w = res["w2"]
        table(
            f"W2 quota fidelity (R={w['rate_limit']}, {w['groups']} groups at {w['interval']}, {w['window_s']} s)",
            ["shards", "requests", "max in any 1 s window", "throughput /s", "x R", "60007 answers"],
            [[r["shards"], r["requests"], r["max_per_1s_window"], f(r["throughput_per_s"], 1),
              f(r["throughput_ratio"], 3), r["rejected_60007"]] for r in w["rows"]],
        )
    if "w3" in res:
        r = res["w3"]
        table(
            f"W3 schedule ({r['groups']} groups at {r['interval_s']} s, R={r['rate_limit']}, ran {r['ran_s']} s)",
            ["max 1 s window (first cycle)", "max 1 s window (all)", "intervals", "median interval s",
             "jitter p50 s", "jitter p99 s", "jitter max s", "poll lag at end s", "60007"],
            [[r["max_per_1s_window_startup"], r["max_per_1s_window_all"], r["intervals_measured"],
              f(r["interval_median_s"], 3), f(r["jitter_p50_s"], 3), f(r["jitter_p99_s"], 3),
              f(r["jitter_max_s"], 3), f(r["poll_lag_at_end_s"], 3), r["rejected_60007"]]],
        )
    if "w4" in res:
        w = res["w4"]
        table(
            "W4 memory after one full cycle (4 attributes per group, value_hashes: per_key)",
            ["groups", "RSS ready MiB", "RSS after cycle MiB", "peak RSS MiB", "KiB / group above 1-group baseline", "first cycle s"],
            [[r["groups"], f(r["rss_ready_kib"] / 1024, 1), f(r["rss_after_cycle_kib"] / 1024, 1),
              f(r["hwm_kib"] / 1024, 1), f(r.get("kib_per_group"), 3), r["first_cycle_s"]] for r in w["rows"]],
        )
        scr = [r for r in w["rows"] if "scrape_median_ms" in r]
        if scr:
            table(
                "W5 /metrics (back-to-back scrapes while polling)",
                ["groups", "median ms plain", "median ms gzip", "body bytes", "gzip bytes",
                 "poll req/s demand", "before", "during scrapes", "poll lag after s"],
                [[r["groups"], f(r["scrape_median_ms"], 1), f(r["scrape_gzip_median_ms"], 1),
                  int(r["body_bytes"]), r["body_gzip_bytes"], f(r["poll_rate_demand"], 0),
                  f(r["poll_rate_before"], 0), f(r["poll_rate_during_scrapes"], 0),
                  f(r["poll_lag_s_after"], 3)] for r in scr],
            )
            table(
                "W5 curl (median of 7) and peak RSS scrapes add (VmHWM reset before, minus VmRSS before)",
                ["groups", "curl ms plain", "curl ms gzip", "1 plain MiB", "1 gzip MiB",
                 "8 parallel plain MiB", "all scrapes MiB"],
                [[r["groups"], f(r["curl_median_ms"], 1), f(r["curl_gzip_median_ms"], 1),
                  f(r["scrape_added_peak_kib"] / 1024, 1),
                  f(r["scrape_gzip_added_peak_kib"] / 1024, 1),
                  f(r["scrape_8_parallel_added_peak_kib"] / 1024, 1),
                  f(r["scrapes_added_peak_kib"] / 1024, 1)] for r in scr],
            )


def http_post(url, body, timeout=10):
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def callback_query(command, token=None, request_time=None):
    q = (f"SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1"
         "&OptPlatform=RESTAPI")
    if token is not None:
        import hashlib
        t = str(request_time if request_time is not None else int(time.time()))
        q += f"&Sign={hashlib.sha256((token + t).encode()).hexdigest()}&RequestTime={t}"
    return q


def metric_values(text, name):
    """{group_id: value} of a per-group family."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            m = re.search(r'group_id="([^"]*)"', line)
            if m:
                out[m.group(1)] = float(line.rsplit(" ", 1)[1])
    return out


def w7_push(bins, env, workdir, args):
    """Callbacks: change-to-/metrics latency at a steady callback rate, CPU per callback, and a
    flood of refused callbacks beside 1 s polling."""
    token = "bench-callback-token"
    out = {}
    # Latency and CPU: polling every 24 h, so every poll is a callback's; each callback follows
    # a write of its group at the fake.
    groups, rate, seconds = 200, args.w7_rate, args.w7_window
    with Procs(workdir) as ctx:
        fake, fake_url = start_fake(ctx, bins, env, groups)
        cfg = write_config(workdir, "push", fake_url, groups, "24h", 200,
                           extra=f"    callback_token: {token}\n")
        cb_port = free_port()
        exp, url = start_exporter(ctx, bins, env, cfg, name="push",
                                  extra=["--callback.listen-address", f"127.0.0.1:{cb_port}"])
        cb_url = f"http://127.0.0.1:{cb_port}/callback"
        # Prime: each group's first poll is its baseline, which counts no change.
        for i in range(groups):
            http_post(cb_url + "?" + callback_query("Group.CallbackAfterGroupAttrChanged", token),
                      json.dumps({"GroupId": f"@TGS#bench{i}"}))
        time.sleep(3)
        cpu0 = cpu_seconds(exp.pid)
        sent = {}
        n = int(rate * seconds)
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            g = f"@TGS#bench{i % groups}"
            http_post(fake_url + "/fake/attrs", json.dumps(
                {"sdkappid": APP, "group_id": g, "mode": "set",
                 "attrs": {"k0": f"v{i:014d}"}}))
            body = json.dumps({"CallbackCommand": "Group.CallbackAfterGroupAttrChanged",
                               "GroupId": g, "Type": "Public", "OptionType": "set"})
            sent[g] = time.time()
            status = http_post(cb_url + "?" + callback_query(
                "Group.CallbackAfterGroupAttrChanged", token), body)
            if status != 200:
                raise RuntimeError(f"callback refused: {status}")
        took = time.monotonic() - start
        time.sleep(3)
        cpu = cpu_seconds(exp.pid) - cpu0
        _, text, _ = http_get(url + "/metrics")
        seen = metric_values(text.decode(), "timattr_group_last_change_timestamp_seconds")
        lat = [seen[g] - t for g, t in sent.items() if seen.get(g, 0) > 0]
        polls, _ = fake_total(fake_url)
        polls -= groups
        out["latency"] = {
            "callbacks": n, "rate": n / took, "groups": groups, "samples": len(lat),
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": max(lat) * 1000 if lat else float("nan"),
            "exporter_cpu_s": cpu, "cpu_us_per_callback": cpu / n * 1e6,
            "polls": polls,
        }
    # The same again, measured where an operator sees it: a scraper reads /metrics back to back
    # (a fresh connection each, as Prometheus' first scrape), and a callback's latency is from
    # its send to the end of the first scrape showing its group's change. The exporter's CPU is
    # not taken here: the scrapes would be in it.
    with Procs(workdir) as ctx:
        fake, fake_url = start_fake(ctx, bins, env, groups)
        cfg = write_config(workdir, "push-scraped", fake_url, groups, "24h", 200,
                           extra=f"    callback_token: {token}\n")
        cb_port = free_port()
        exp, url = start_exporter(ctx, bins, env, cfg, name="push-scraped",
                                  extra=["--callback.listen-address", f"127.0.0.1:{cb_port}"])
        cb_url = f"http://127.0.0.1:{cb_port}/callback"
        for i in range(groups):
            http_post(cb_url + "?" + callback_query("Group.CallbackAfterGroupAttrChanged", token),
                      json.dumps({"GroupId": f"@TGS#bench{i}"}))
        time.sleep(3)
        lock = threading.Lock()
        pending = {}  # group -> send times of callbacks not yet seen at /metrics
        lat = []
        scrapes = []
        done = threading.Event()

        def scraper():
            while not done.is_set() or any(pending.values()):
                t0 = time.time()
                _, text, _ = http_get(url + "/metrics")
                t1 = time.time()
                scrapes.append(t1 - t0)
                changed = metric_values(text.decode(), "timattr_group_last_change_timestamp_seconds")
                with lock:
                    for g, sends in pending.items():
                        # The exporter stamps a change when its poll answered, after the send.
                        while sends and changed.get(g, 0) >= sends[0]:
                            lat.append(t1 - sends.pop(0))
                if done.is_set() and time.time() - stop_at > 5:
                    break

        stop_at = float("inf")
        th = threading.Thread(target=scraper, daemon=True)
        th.start()
        n = int(rate * seconds)
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            g = f"@TGS#bench{i % groups}"
            http_post(fake_url + "/fake/attrs", json.dumps(
                {"sdkappid": APP, "group_id": g, "mode": "set",
                 "attrs": {"k0": f"v{i:014d}"}}))
            body = json.dumps({"CallbackCommand": "Group.CallbackAfterGroupAttrChanged",
                               "GroupId": g, "Type": "Public", "OptionType": "set"})
            with lock:
                pending.setdefault(g, []).append(time.time())
            status = http_post(cb_url + "?" + callback_query(
                "Group.CallbackAfterGroupAttrChanged", token), body)
            if status != 200:
                raise RuntimeError(f"callback refused: {status}")
        took = time.monotonic() - start
        stop_at = time.time()
        done.set()
        th.join(timeout=30)
        unseen = sum(len(v) for v in pending.values())
        out["scraped"] = {
            "callbacks": n, "rate": n / took, "samples": len(lat), "unseen": unseen,
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": max(lat) * 1000 if lat else float("nan"),
            "scrapes": len(scrapes), "scrape_p50_ms": percentile(scrapes, 50) * 1000,
        }
    # The flood: 5,000 refused callbacks in 10 s while 200 groups poll every 1 s.
    with Procs(workdir) as ctx:
        fake, fake_url = start_fake(ctx, bins, env, 200, rate_limit=200)
        cfg = write_config(workdir, "flood", fake_url, 200, "1s", 200,
                           extra=f"    callback_token: {token}\n")
        cb_port = free_port()
        exp, url = start_exporter(ctx, bins, env, cfg, name="flood",
                                  extra=["--callback.listen-address", f"127.0.0.1:{cb_port}"])
        cb_url = f"http://127.0.0.1:{cb_port}/callback"
        time.sleep(5)
        t_before = time.monotonic()
        time.sleep(10)
        t_flood = time.monotonic()
        cpu0 = cpu_seconds(exp.pid)
        body = json.dumps({"CallbackCommand": "Group.CallbackAfterGroupAttrChanged",
                           "GroupId": "@TGS#bench1"})
        refused = 0
        for i in range(5000):
            due = t_flood + i / 500
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if http_post(cb_url + "?" + callback_query(
                    "Group.CallbackAfterGroupAttrChanged", "forged-token"), body) == 403:
                refused += 1
        t_end = time.monotonic()
        cpu = cpu_seconds(exp.pid) - cpu0
        reqs = fake_requests(fake_url)["seconds"]
        # The fake's clock starts at its own start; align on the last arrival vs now.
        shift = time.monotonic() - max(reqs)
        before = [t for t in reqs if t_before - shift <= t < t_flood - shift]
        during = [t for t in reqs if t_flood - shift <= t < t_end - shift]
        out["flood"] = {
            "bad_callbacks": 5000, "refused_403": refused, "flood_s": t_end - t_flood,
            "polls_per_s_before": len(before) / (t_flood - t_before),
            "polls_per_s_during": len(during) / (t_end - t_flood),
            "max_window_during": max_window(during),
            "exporter_cpu_s_during": cpu,
        }
    return out

def w9_bcrypt_flood(bins, env, workdir, args):
    """Basic auth under a password-guessing flood beside 1 s polling: 16 clients send /metrics
    with wrong passwords, each one new (no cache hit), for 10 s, while 200 groups poll every
    1 s at R = 200; a right password scrapes once a second throughout. Measured: the exporter's
    CPU during the flood (one bcrypt at a time should hold it near one core), the polls' rate at
    the fake before and during, and the right login's latency."""
    import base64
    user, password = "prometheus", "change-me"
    # examples/web-config.yml's hash of "change-me" (bcrypt cost 10).
    pw_hash = "$2b$10$nZq17I.dSP3qQU8p0zkrXOQL/70RvSBUEDQ0nt.7IXPCGKy4qmksS"
    web = os.path.join(workdir, "web-bcrypt.yml")
    with open(web, "w") as f:
        f.write(f"basic_auth_users:\n  {user}: {pw_hash}\n")

    def auth(pw):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    def status_of(url, headers):
        try:
            return http_get(url, headers=headers, timeout=30)[0]
        except urllib.error.HTTPError as e:
            return e.code

    out = {}
    with Procs(workdir) as ctx:
        fake, fake_url = start_fake(ctx, bins, env, 200, rate_limit=200)
        cfg = write_config(workdir, "bcrypt", fake_url, 200, "1s", 200)
        port = free_port()
        exp = ctx.start([bins["exporter"], "--config.file", cfg, "--web.listen-address",
                         f"127.0.0.1:{port}", "--log.level", "warn", "--web.config.file", web],
                        "bcrypt", env=env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: status_of(url + "/-/ready", auth(password)) == 200, 120, "ready")
        time.sleep(5)
        t_before = time.monotonic()
        time.sleep(10)
        t_flood = time.monotonic()
        cpu0 = cpu_seconds(exp.pid)
        stop = threading.Event()
        statuses, good = [], []

        def guesser(w):
            n = 0
            while not stop.is_set():
                statuses.append(status_of(url + "/metrics", auth(f"wrong-{w}-{n}")))
                n += 1

        def scraper():
            while not stop.is_set():
                t0 = time.monotonic()
                good.append((status_of(url + "/metrics", auth(password)), time.monotonic() - t0))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

        threads = [threading.Thread(target=guesser, args=(w,)) for w in range(16)]
        threads.append(threading.Thread(target=scraper))
        for t in threads:
            t.start()
        time.sleep(10)
        stop.set()
        for t in threads:
            t.join()
        t_end = time.monotonic()
        cpu = cpu_seconds(exp.pid) - cpu0
        reqs = fake_requests(fake_url)["seconds"]
        shift = time.monotonic() - max(reqs)
        before = [t for t in reqs if t_before - shift <= t < t_flood - shift]
        during = [t for t in reqs if t_flood - shift <= t < t_end - shift]
        lat = [d for st, d in good if st == 200]
        out = {
            "wrong_attempts": len(statuses), "answered_401": statuses.count(401),
            "flood_s": t_end - t_flood, "exporter_cpu_s": cpu,
            "exporter_cores": cpu / (t_end - t_flood),
            "polls_per_s_before": len(before) / (t_flood - t_before),
            "polls_per_s_during": len(during) / (t_end - t_flood),
            "max_window_during": max_window(during),
            "good_scrapes": len(good), "good_ok": len(lat),
            "good_p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
            "good_max_ms": max(lat) * 1000 if lat else float("nan"),
        }
    return out

# The per-group families left out of /metrics in W10, so that reading `timattr_groups` and the
# reload timestamp does not render 14 series per group every 0.1 s; it changes no polling,
# discovery, reload or state-file work.
W10_EXCLUDE = 'exclude_metrics: ["timattr_group_.*"]\n'


def w10_one(bins, env, workdir, n):
    """State-file writes, reload and discovery at n groups (W4's polling: n/interval = 2,000/s
    at most, rate limit twice that)."""
    interval = max(5, n // 2000)
    rate = max(100, 2 * n / interval)
    row = {"groups": n, "interval_s": interval, "rate_limit": rate}
    state = os.path.join(workdir, f"state-{n}.json")
    # --- state file and reload: n configured groups.
    with Procs(workdir) as ctx:
        _, fake_url = start_fake(ctx, bins, env, n)
        cfg = write_config(workdir, f"w10-{n}", fake_url, n, f"{interval}s", rate, 64,
                           top=f"state_file: {state}\n" + W10_EXCLUDE)
        exp, exp_url = start_exporter(ctx, bins, env, cfg)
        # Watch the writer's temporary file (created after serialising, removed by the rename):
        # its lifetime is the write + fsync + rename; serialising comes just before it.
        tmp = os.path.join(workdir, f".state-{n}.json.tmp-{exp.pid}")
        writes, stop = [], threading.Event()

        def watcher():
            seen = None
            while not stop.is_set():
                there = os.path.exists(tmp)
                now = time.time()
                if there and seen is None:
                    seen = now
                elif not there and seen is not None:
                    try:
                        size = os.path.getsize(state)
                    except OSError:
                        size = None
                    writes.append({"tmp_appeared": seen, "tmp_gone": now, "size": size})
                    seen = None
                time.sleep(0.002)

        th = threading.Thread(target=watcher, daemon=True)
        th.start()
        t0 = time.monotonic()
        wait_for(lambda: len(fake_total(fake_url)[1]) >= n, interval * 2 + 60,
                 f"every one of {n} groups polled", every=max(1.0, interval / 10))
        row["first_cycle_s"] = round(time.monotonic() - t0, 1)
        # One more periodic write after the cycle (every 30 s when the state changed).
        cycle_end = time.time()
        wait_for(lambda: any(w["tmp_appeared"] > cycle_end for w in writes), 40,
                 "a state write after the cycle", every=0.2)
        time.sleep(2)
        # Polls around each write, at the fake: its times are seconds since it started; anchor
        # them to the wall clock with the newest arrival (polling runs at ~2,000/s).
        secs = fake_requests(fake_url)["seconds"]
        offset = time.time() - max(secs)
        secs = sorted(s + offset for s in secs)
        import bisect

        def count(a, b):
            return bisect.bisect_left(secs, b) - bisect.bisect_left(secs, a)

        def max_gap(a, b):
            i, j = bisect.bisect_left(secs, a), bisect.bisect_left(secs, b)
            seg = secs[i:j]
            return max((y - x for x, y in zip(seg, seg[1:])), default=None)

        for w in writes:
            a = w["tmp_appeared"]
            w["write_ms"] = (w["tmp_gone"] - a) * 1000
            w["polls_per_s_2s_before"] = count(a - 3, a - 1) / 2
            w["polls_in_1s_before"] = count(a - 1, a)
            w["polls_in_1s_from_tmp"] = count(a, a + 1)
            w["polls_in_1s_after_gone"] = count(w["tmp_gone"], w["tmp_gone"] + 1)
            w["max_gap_ms_around"] = (max_gap(a - 1, w["tmp_gone"] + 1) or 0) * 1000
            w["tmp_appeared"] = round(w["tmp_appeared"] - cycle_end, 3)  # relative to the cycle's end
            w["tmp_gone"] = round(w["tmp_gone"] - cycle_end, 3)
        steady = [y - x for x, y in zip(secs, secs[1:]) if x > cycle_end - 60]
        row["poll_gap_p99_ms"] = percentile(steady, 99) * 1000 if steady else None
        row["poll_gap_max_ms"] = max(steady) * 1000 if steady else None
        row["state_writes"] = list(writes)
        # Reload: SIGHUP with the same file; time until the success timestamp moves (its value
        # is when the reload finished), twice.
        reloads = []
        for _ in range(2):
            text = http_get(exp_url + "/metrics")[1].decode()
            before = metric_value(text, "timattr_config_last_reload_success_timestamp_seconds")
            sent = time.time()
            exp.send_signal(signal.SIGHUP)
            seen = {}

            def moved():
                v = metric_value(http_get(exp_url + "/metrics")[1].decode(),
                                 "timattr_config_last_reload_success_timestamp_seconds")
                seen["v"] = v
                return v is not None and v != before
            wait_for(moved, 120, "reload", every=0.02)
            reloads.append({"timestamp_minus_sighup_s": seen["v"] - sent,
                            "seen_after_s": time.time() - sent})
            time.sleep(3)
        row["reloads"] = reloads
        row["rss_before_shutdown_kib"] = mem_kib(exp.pid, "VmRSS")
        # Shutdown writes the state file: SIGTERM to exit.
        writes.clear()
        sent = time.monotonic()
        exp.send_signal(signal.SIGTERM)
        exp.wait(timeout=120)
        row["shutdown_s"] = time.monotonic() - sent
        time.sleep(0.05)
        stop.set()
        row["shutdown_write_ms"] = writes[-1]["write_ms"] if writes and "write_ms" in writes[-1] else (
            (writes[-1]["tmp_gone"] - writes[-1]["tmp_appeared"]) * 1000 if writes else None)
        row["state_file_bytes"] = os.path.getsize(state)
    # --- discovery: the app with `discover` and no groups; the fake lists n groups.
    with Procs(workdir) as ctx:
        _, fake_url = start_fake(ctx, bins, env, n)
        path = os.path.join(workdir, f"w10-discover-{n}.yml")
        with open(path, "w") as f:
            f.write(f"""poll_interval: {interval}s
value_hashes: per_key
{W10_EXCLUDE}apps:
  - sdkappid: {APP}
    endpoint: {fake_url}/
    identifier: administrator
    secret_key_env: {KEY_ENV}
    rate_limit: {rate}
    max_concurrency: 64
    timeout: 5s
    discover:
      refresh_interval: 10m
""")
        t0 = time.monotonic()
        exp, exp_url = start_exporter(ctx, bins, env, path, wait_ready=False)
        seen = {}

        def all_assigned():
            v = metric_value(http_get(exp_url + "/metrics")[1].decode(), "timattr_groups")
            seen["v"] = v
            return v is not None and v >= n
        wait_for(all_assigned, n / 10_000 * 3 + 60, f"{n} groups discovered", every=0.1)
        row["discovery_s"] = time.monotonic() - t0
        lists = fake_requests_api(fake_url, "get_appid_group_list")["seconds"]
        row["list_calls"] = len(lists)
        row["list_span_s"] = max(lists) - min(lists) if lists else None
        row["rss_after_discovery_kib"] = mem_kib(exp.pid, "VmRSS")
    print(f"  w10: {json.dumps(row)}", file=sys.stderr)
    return row


def w10_shutdown_write(bins, env, workdir, n):
    """SIGTERM right after the first cycle, before the next periodic write, so that the shutdown
    has a changed state to write: time to exit, and the temporary file's life within it."""
    interval = max(5, n // 2000)
    rate = max(100, 2 * n / interval)
    state = os.path.join(workdir, f"state-sd-{n}.json")
    with Procs(workdir) as ctx:
        _, fake_url = start_fake(ctx, bins, env, n)
        cfg = write_config(workdir, f"w10-sd-{n}", fake_url, n, f"{interval}s", rate, 64,
                           top=f"state_file: {state}\n" + W10_EXCLUDE)
        exp, _ = start_exporter(ctx, bins, env, cfg)
        tmp = os.path.join(workdir, f".state-sd-{n}.json.tmp-{exp.pid}")
        wait_for(lambda: len(fake_total(fake_url)[1]) >= n, interval * 2 + 60,
                 f"every one of {n} groups polled", every=1.0)
        before = os.path.getmtime(state) if os.path.exists(state) else None
        sent = time.monotonic()
        exp.send_signal(signal.SIGTERM)
        appeared = gone = None
        while exp.poll() is None:
            there = os.path.exists(tmp)
            if there and appeared is None:
                appeared = time.monotonic()
            elif not there and appeared is not None and gone is None:
                gone = time.monotonic()
            time.sleep(0.002)
        exited = time.monotonic()
        after = os.path.getmtime(state) if os.path.exists(state) else None
        row = {
            "groups": n,
            "shutdown_s": exited - sent,
            "state_written_at_shutdown": after is not None and after != before,
            "tmp_appeared_after_sigterm_s": None if appeared is None else appeared - sent,
            "tmp_life_ms": None if appeared is None or gone is None else (gone - appeared) * 1000,
            "state_file_bytes": os.path.getsize(state) if after else None,
        }
    print(f"  w10 shutdown: {json.dumps(row)}", file=sys.stderr)
    return row


def w10_scale(bins, env, workdir, args):
    """W10: state file, reload and discovery at each of --w10-sizes groups; with
    --w10-shutdown-only, only the shutdown-with-a-write pass."""
    if args.w10_shutdown_only:
        return {"shutdown_rows": [w10_shutdown_write(bins, env, workdir, n) for n in args.w10_sizes]}
    return {"rows": [w10_one(bins, env, workdir, n) for n in args.w10_sizes],
            "shutdown_rows": [w10_shutdown_write(bins, env, workdir, n) for n in args.w10_sizes]}


def w8_fairness(bins, env, workdir, args):
    """Callbacks against an exhausted quota: 60 groups polled every 2 s (30 of the app's 50
    requests/s) beside callbacks for 200 other groups (polled every 24 h otherwise). First a push
    demand that fits the spare quota (15 groups/s), then one that does not (200 groups/s).
    Measured at the fake: polls per second of each kind, and the gaps between consecutive polls
    of each regular group."""
    token = "bench-callback-token"
    regular, pushed, rate = 60, 200, 50
    window = args.w8_window
    out = {}
    with Procs(workdir) as ctx:
        fake, fake_url = start_fake(ctx, bins, env, regular + pushed)
        path = os.path.join(workdir, "fair.yml")
        with open(path, "w") as f:
            f.write(f"""poll_interval: 24h
value_hashes: per_key
apps:
  - sdkappid: {APP}
    endpoint: {fake_url}/
    identifier: administrator
    secret_key_env: {KEY_ENV}
    rate_limit: {rate}
    max_concurrency: 64
    timeout: 5s
    callback_token: {token}
    groups:
""")
            for i in range(regular):
                f.write(f'      - {{id: "@TGS#bench{i}", poll_interval: 2s}}\n')
            for i in range(regular, regular + pushed):
                f.write(f'      - "@TGS#bench{i}"\n')
        cb_port = free_port()
        exp, url = start_exporter(ctx, bins, env, path, name="fair",
                                  extra=["--callback.listen-address", f"127.0.0.1:{cb_port}"])
        cb_url = f"http://127.0.0.1:{cb_port}/callback"
        q = lambda: cb_url + "?" + callback_query("Group.CallbackAfterGroupAttrChanged", token)
        # Warm-up: every regular group's first poll is spread over its first interval; the 24 h
        # groups' first polls are spread over a day, so almost none fall into the run.
        time.sleep(6)
        phases = []
        for name, per_second in (("quiet", 0), ("fits", 15), ("exhausted", pushed)):
            t0 = time.monotonic()
            sent = 0
            k = 0
            while time.monotonic() < t0 + window:
                if per_second == 0:
                    time.sleep(0.05)
                    continue
                due = t0 + sent / per_second
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                g = f"@TGS#bench{regular + k % pushed}"
                k += 1
                body = json.dumps({"CallbackCommand": "Group.CallbackAfterGroupAttrChanged",
                                   "GroupId": g, "Type": "Public"})
                if http_post(q(), body) != 200:
                    raise RuntimeError("callback refused")
                sent += 1
            phases.append((name, t0, time.monotonic(), sent))
            time.sleep(0.5)
        r = fake_requests(fake_url, groups=True)
        now = time.monotonic()
        shift = now - max(r["seconds"])
        for name, t0, t1, sent in phases:
            # Skip the phase's first 2 s: the regular schedule takes that long to show a new
            # steady state.
            lo, hi = t0 + 2 - shift, t1 - shift
            reg, push, per_group = 0, 0, {}
            for t, g in zip(r["seconds"], r["groups"]):
                if not (lo <= t < hi) or g is None:
                    continue
                n = int(g.removeprefix("@TGS#bench"))
                if n < regular:
                    reg += 1
                    per_group.setdefault(g, []).append(t)
                else:
                    push += 1
            gaps = [b - a for ts in per_group.values() for a, b in zip(ts, ts[1:])]
            span = hi - lo
            out[name] = {
                "callbacks_per_s": sent / (t1 - t0),
                "regular_polls_per_s": reg / span, "push_polls_per_s": push / span,
                "total_per_s": (reg + push) / span,
                "regular_gap_p50_s": percentile(gaps, 50), "regular_gap_p99_s": percentile(gaps, 99),
                "regular_gap_max_s": max(gaps) if gaps else float("nan"),
            }
        out["max_window_all"] = max_window(r["seconds"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--blackbox", default="/usr/bin/prometheus-blackbox-exporter")
    ap.add_argument("--only", default="w1,w2,w3,w4", help="comma-separated: w1,w1https,w2,w3,w4,w7,w8,w9,w10 (w4 includes w5)")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--w1-rate", type=float, default=500)
    ap.add_argument("--w1-window", type=float, default=20)
    ap.add_argument("--w1-runs", type=int, default=5)
    ap.add_argument("--nginx", default="nginx", help="w1https: nginx terminating TLS in front of the fake")
    ap.add_argument("--w2-window", type=float, default=25)
    ap.add_argument("--w3-groups", type=int, default=12_000)
    ap.add_argument("--w3-interval", type=int, default=60)
    ap.add_argument("--w3-cycles", type=float, default=2.5)
    ap.add_argument("--w4-sizes", default="1000,10000,100000")
    ap.add_argument("--w5-scrapes", type=int, default=20)
    ap.add_argument("--w7-rate", type=float, default=100)
    ap.add_argument("--w7-window", type=float, default=20)
    ap.add_argument("--w8-window", type=float, default=15)
    ap.add_argument("--w10-sizes", default="100000,250000", help="w10: state file, reload, discovery")
    ap.add_argument("--w10-shutdown-only", action="store_true", help="w10: only the shutdown-with-a-write pass")
    args = ap.parse_args()
    args.w4_sizes = [int(x) for x in args.w4_sizes.split(",") if x]
    args.w10_sizes = [int(x) for x in args.w10_sizes.split(",") if x]
    bins = {
        "exporter": os.path.join(args.bin_dir, "timattr_exporter"),
        "fake": os.path.join(args.bin_dir, "timattr_fake_api"),
        "usersig": os.path.join(args.bin_dir, "examples", "usersig"),
        "loadgen": os.path.join(args.bin_dir, "examples", "loadgen"),
        "blackbox": args.blackbox,
    }
    env = dict(os.environ)
    # A benchmark key, not a secret: the fake and the exporter read it from the environment.
    env.setdefault(KEY_ENV, "timattr-bench-key-not-a-secret")
    env["RUST_LOG"] = "warn"
    only = set(args.only.split(","))
    res = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "nproc": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="timattr-bench-") as workdir:
        for name, fn in (("w1", w1_cost), ("w1https", w1_https), ("w2", w2_quota), ("w3", w3_schedule), ("w4", w4_w5_memory_scrape), ("w7", w7_push), ("w8", w8_fairness), ("w9", w9_bcrypt_flood), ("w10", w10_scale)):
            if name in only:
                s = time.monotonic()
                print(f"running {name} ...", file=sys.stderr)
                res[name] = fn(bins, env, workdir, args)
                print(f"  {name} took {time.monotonic() - s:.0f} s", file=sys.stderr)
    report(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
