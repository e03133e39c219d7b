"""The measurements of benches/log-slices (see its header). Starts tessera and
nginx on loopback ports of its own and stops them on exit."""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

DAY = "2026-11-20"
LAST_HOUR = (f"{DAY}T23:00:00Z", "2026-11-21T00:00:00Z")
# About 100 MB of the 1 GiB day (44.7 MB an hour).
HUNDRED = (f"{DAY}T10:00:00Z", f"{DAY}T12:14:00Z")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def generate(path, size):
    """A day of plain RFC 3339 lines, about `size` bytes, evenly spread."""
    if os.path.exists(path) and abs(os.path.getsize(path) - size) < size // 10:
        return
    log(f"generating {path} ({size >> 20} MiB)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line_len = 96
    per_second = max(1, size // line_len // 86400)
    step = 1000 // per_second if per_second <= 1000 else 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        n = 0
        for s in range(86400):
            hh, mm, ss = s // 3600, (s // 60) % 60, s % 60
            prefix = f"{DAY}T{hh:02}:{mm:02}:{ss:02}."
            chunk = []
            for k in range(per_second):
                ms = min(999, k * step)
                n += 1
                chunk.append(f"{prefix}{ms:03}Z INFO station=pump-7 reading={n} flow={n % 97}.{n % 10} pressure={n % 13}.5 valve=open\n")
            f.write("".join(chunk))
    os.rename(tmp, path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_spread(xs):
    return statistics.median(xs), min(xs), max(xs)


def curl(url, fmt, out="/dev/null"):
    r = subprocess.run(["taskset", "-c", "0", "curl", "-sS", "-o", out, "-w", fmt, url], check=True, capture_output=True, text=True)
    return r.stdout


def wait_http(url, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if curl(url, "%{http_code}") == "200":
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def settled(base, device):
    """Waits until the device's log is indexed to its end and has its digest."""
    entry = {}
    for _ in range(1200):
        out = subprocess.run(["curl", "-s", f"{base}/logs/{device}"], capture_output=True, text=True).stdout
        logs = json.loads(out or "{}").get("logs") or [{}]
        entry = logs[0]
        if entry.get("indexed_to") == entry.get("size") and entry.get("digest"):
            return
        time.sleep(0.1)
    raise SystemExit(f"{device}'s log was not indexed and digested within two minutes: {entry}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--nofile", type=int, default=65536)
    ap.add_argument("--results", required=True)
    ap.add_argument("--doc", required=True)
    a = ap.parse_args()

    logs = os.path.join(a.data, "logs")
    big = os.path.join(logs, "big", "day.log")
    small = os.path.join(logs, "small", "day.log")
    generate(big, 1 << 30)
    generate(small, 10 << 20)
    empty = os.path.join(a.work, "tiles")
    os.makedirs(empty)
    results = {"reps": a.reps}
    # A root holding only the 1 GiB log (a hard link: the same file) for `tessera index`.
    index_root = os.path.join(a.data, "index-root")
    index_log = os.path.join(index_root, "big", "day.log")
    shutil.rmtree(index_root, ignore_errors=True)
    os.makedirs(os.path.dirname(index_log))
    os.link(big, index_log)

    # Index from scratch (page cache warm: the file was just written or read).
    # Dirty pages of earlier runs written back first, so they do not compete.
    subprocess.run(["sync"], check=True)
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
    rates, sizes = [], None
    # One untimed run first: right after a build the first runs were a third slower.
    for run in range(6):
        state = os.path.join(a.work, "state-index")
        shutil.rmtree(state, ignore_errors=True)
        t = time.perf_counter()
        out = subprocess.run([a.bin, "index", "--tiles", empty, "--logs", index_root, "--state", state],
                             check=True, capture_output=True, text=True).stdout
        if run > 0:
            rates.append(os.path.getsize(big) / (time.perf_counter() - t) / 1e9)
        m = re.search(r"time index: (\d+) marks for \d+ logs, (\d+) KiB on disk for (\d+) MiB of logs \(([\d.]+) %\)", out)
        sizes = {"marks": int(m[1]), "kib": int(m[2]), "log_mib": int(m[3]), "percent": float(m[4])}
    # The machine's own pace in the same run: `wc -l` over the same file
    # (this VM's CPU speed varied by half between runs minutes apart).
    wc = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(["wc", "-l", big], check=True, capture_output=True)
        wc.append(os.path.getsize(big) / (time.perf_counter() - t) / 1e9)
    results["wc_gbps"] = wc
    results["index_gbps"] = rates
    results["index_size"] = sizes
    log(f"index from scratch: {median_spread(rates)} GB/s, {sizes}")

    # 1 MB appended (the next day's first lines), then an index pass; the
    # update's own time from its debug line. The log is cut back after.
    original = os.path.getsize(big)
    append_ms, append_wall = [], []
    n = 0
    try:
        for r in range(a.reps):
            lines = []
            size = 0
            while size < 1_000_000:
                n += 1
                line = f"2026-11-21T00:{(n // 600) % 60:02}:{(n // 10) % 60:02}.{(n % 10) * 100:03}Z INFO appended {n}\n"
                lines.append(line)
                size += len(line)
            with open(big, "a") as f:
                f.write("".join(lines))
            env = dict(os.environ, TESSERA_LOG="tessera::catalog=debug")
            t = time.perf_counter()
            res = subprocess.run([a.bin, "index", "--tiles", empty, "--logs", index_root, "--state", state],
                                 check=True, capture_output=True, text=True, env=env)
            append_wall.append((time.perf_counter() - t) * 1000)
            m = re.search(r"log time index updated.*?read=(\d+).*?rebuilt=(\w+).*?elapsed_us=(\d+)", res.stderr)
            if not m or m[2] != "false":
                raise SystemExit(f"no incremental update in: {res.stderr}")
            append_ms.append(int(m[3]) / 1000)
    finally:
        os.truncate(big, original)
    results["append_ms"] = append_ms
    results["append_wall_ms"] = append_wall
    log(f"append 1 MB: {median_spread(append_ms)} ms (process {median_spread(append_wall)} ms)")

    # Servers: tessera over the logs, nginx over the same directory.
    tport, nport = free_port(), free_port()
    state = os.path.join(a.work, "state")
    # One worker, pinned to the second core, and every curl to the first:
    # unpinned, a download ran at 1 or at 3 GB/s by whether curl and the
    # worker happened to share a core, whatever was served.
    conf = os.path.join(a.work, "tessera.toml")
    with open(conf, "w") as f:
        f.write("[http]\nworkers = 1\n")
    tessera = subprocess.Popen(["taskset", "-c", "1", a.bin, "serve", "--config", conf, "--listen", f"127.0.0.1:{tport}",
                                "--tiles", empty, "--logs", logs, "--state", state],
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(a.work, "tessera.err"), "w"))
    ndir = os.path.join(a.work, "nginx")
    os.makedirs(os.path.join(ndir, "tmp"))
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1;
worker_rlimit_nofile {a.nofile};
daemon off;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
user www-data;
events {{ worker_connections 1024; }}
http {{
  types {{ text/plain log; }}
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  client_body_temp_path {ndir}/tmp/body;
  proxy_temp_path {ndir}/tmp/proxy;
  fastcgi_temp_path {ndir}/tmp/fastcgi;
  uwsgi_temp_path {ndir}/tmp/uwsgi;
  scgi_temp_path {ndir}/tmp/scgi;
  server {{ listen 127.0.0.1:{nport}; root {logs}; }}
}}
""")
    os.chmod(a.work, 0o755)
    nginx = subprocess.Popen(["nginx", "-p", ndir, "-c", os.path.join(ndir, "nginx.conf"), "-e", os.path.join(ndir, "error.log")])
    try:
        T = f"http://127.0.0.1:{tport}"
        N = f"http://127.0.0.1:{nport}"
        wait_http(f"{T}/readyz", 120)
        wait_http(f"{N}/small/day.log")
        # The index of the 1 GiB log is there once the listing says so.
        # The background work on the 1 GiB log (its index, its digest) is
        # done before anything is timed.
        settled(T, "big")
        q = f"since={LAST_HOUR[0]}&until={LAST_HOUR[1]}"

        # Time to first byte of the last hour, 1 GiB against 10 MiB, alternating.
        ttfb = {"big": [], "small": []}
        for _ in range(3):  # warm-up
            for d in ttfb:
                curl(f"{T}/logs/{d}/day.log?{q}", "%{time_starttransfer}")
        for _ in range(a.reps):
            for d in ttfb:
                ttfb[d].append(float(curl(f"{T}/logs/{d}/day.log?{q}", "%{time_starttransfer}")) * 1000)
        results["ttfb_ms"] = ttfb
        log(f"ttfb last hour: big {median_spread(ttfb['big'])} small {median_spread(ttfb['small'])} ms")

        # 100 MB slice against the same bytes as a whole file.
        hundred_dir = os.path.join(logs, "hundred")
        os.makedirs(hundred_dir, exist_ok=True)
        hq = f"since={HUNDRED[0]}&until={HUNDRED[1]}"
        hundred = os.path.join(hundred_dir, "day.log")
        curl(f"{T}/logs/big/day.log?{hq}", "%{http_code}", hundred)
        wait_http(f"{T}/logs/hundred/day.log")
        settled(T, "hundred")
        slice_mbs, whole_mbs = [], []
        for _ in range(2):
            curl(f"{T}/logs/big/day.log?{hq}", "")
            curl(f"{T}/logs/hundred/day.log", "")
        # Five downloads over one connection per curl, alternating slice and
        # file: a 100 MB download takes tens of milliseconds here, too short
        # for one sample per process to be steady.
        def five(url):
            out = subprocess.run(["taskset", "-c", "0", "curl", "-sS", "-w", "%{speed_download}\\n"] + ["-o", "/dev/null", url] * 5,
                                 check=True, capture_output=True, text=True).stdout
            return [float(x) / 1e6 for x in out.split()]

        # Single downloads range from 1 to 3 GB/s here at random, whichever
        # is served: at least 100 of each, so that the medians settle.
        for _ in range(max(a.reps, 20)):
            slice_mbs.extend(five(f"{T}/logs/big/day.log?{hq}"))
            whole_mbs.extend(five(f"{T}/logs/hundred/day.log"))
        results["slice_mb"] = os.path.getsize(hundred) / 1e6
        results["slice_mbps"] = slice_mbs
        results["whole_mbps"] = whole_mbs
        log(f"100 MB: slice {median_spread(slice_mbs)} whole {median_spread(whole_mbs)} MB/s")

        # Today's alternative: the whole day from nginx, filtered by awk.
        awk = f'$1 >= "{LAST_HOUR[0][:-1]}" && $1 < "{LAST_HOUR[1][:-1]}"'
        tessera_s, nginx_awk_s = [], []
        want = os.path.join(a.work, "hour.tessera")
        got = os.path.join(a.work, "hour.awk")
        for _ in range(max(3, a.reps // 2)):
            t = time.perf_counter()
            curl(f"{T}/logs/big/day.log?{q}", "", want)
            tessera_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(f"curl -s {N}/big/day.log | gawk '{awk}' > {got}", shell=True, check=True)
            nginx_awk_s.append(time.perf_counter() - t)
        same = open(want, "rb").read() == open(got, "rb").read()
        if not same:
            raise SystemExit("tessera's last hour differs from nginx + awk's")
        results["last_hour_bytes"] = os.path.getsize(want)
        results["tessera_hour_s"] = tessera_s
        results["nginx_awk_hour_s"] = nginx_awk_s
        log(f"last hour: tessera {median_spread(tessera_s)} s, nginx+awk {median_spread(nginx_awk_s)} s")
    finally:
        for p in (tessera, nginx):
            p.send_signal(signal.SIGTERM)
        for p in (tessera, nginx):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(os.path.join(logs, "hundred"), ignore_errors=True)

    with open(a.results, "w") as f:
        json.dump(results, f, indent=1)
    table = report(results)
    print(table)
    doc = open(a.doc).read()
    begin, end = "<!-- log-slices:begin -->", "<!-- log-slices:end -->"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + table + doc[doc.index(end):]
    else:
        doc += f"\n{begin}\n{table}{end}\n"
    open(a.doc, "w").write(doc)


def report(r):
    def fmt(xs, unit, digits=2):
        m, lo, hi = median_spread(xs)
        return f"{m:.{digits}f} {unit} ({lo:.{digits}f}–{hi:.{digits}f})"

    ttfb_big, ttfb_small = statistics.median(r["ttfb_ms"]["big"]), statistics.median(r["ttfb_ms"]["small"])
    ttfb_ratio = ttfb_big / ttfb_small
    slice_ratio = statistics.median(r["slice_mbps"]) / statistics.median(r["whole_mbps"])
    idx = statistics.median(r["index_gbps"])
    app = statistics.median(r["append_ms"])
    size = r["index_size"]
    hour = statistics.median(r["nginx_awk_hour_s"]) / statistics.median(r["tessera_hour_s"])
    met = lambda ok: "met" if ok else "**not met**"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""## Latest run of `benches/log-slices`

{when}, `benches/log-slices --reps {r['reps']}`: medians of {r['reps']} alternating requests (5 index
runs), range in brackets. A 1 GiB and a 10 MiB plain log, each spanning one day.

| measure | tessera | compared with | ratio | goal | |
|---|---|---|---|---|---|
| time to first byte, last hour of the 1 GiB log | {fmt(r['ttfb_ms']['big'], 'ms')} | 10 MiB log: {fmt(r['ttfb_ms']['small'], 'ms')} | {ttfb_ratio:.2f} | ≤ 1.5 | {met(ttfb_ratio <= 1.5)} |
| a {r['slice_mb']:.0f} MB slice, by sendfile ({len(r['slice_mbps'])} downloads each) | {fmt(r['slice_mbps'], 'MB/s', 0)} | the same bytes as a whole file: {fmt(r['whole_mbps'], 'MB/s', 0)} | {slice_ratio:.2f} | ≥ 0.9 | {met(slice_ratio >= 0.9)} |
| index of the 1 GiB log from scratch (`tessera index`, whole process) | {fmt(r['index_gbps'], 'GB/s')} | `wc -l` over the same file: {fmt(r['wc_gbps'], 'GB/s')} | {idx / statistics.median(r['wc_gbps']):.2f} | ≥ 1 GB/s | {met(idx >= 1.0)} |
| index update after a 1 MB append | {fmt(r['append_ms'], 'ms')} | whole `tessera index` process: {fmt(r['append_wall_ms'], 'ms', 1)} | | < 10 ms | {met(app < 10)} |
| index size | {size['kib']} KiB, {size['marks']} marks | {size['log_mib']} MiB of log | {size['percent']:.3f} % | < 0.1 % | {met(size['percent'] < 0.1)} |
| the last hour ({r['last_hour_bytes'] / 1e6:.1f} MB), start to end | {fmt(r['tessera_hour_s'], 's', 3)} | nginx + gawk over the whole day: {fmt(r['nginx_awk_hour_s'], 's', 2)} | {hour:.0f}× faster | | |

"""


if __name__ == "__main__":
    main()
