#!/usr/bin/env python3
"""Tile archives, tessera against martin (benches/compare --archives).

    archives.py measure WORK TESSERA MARTIN PMTILES_PYTHON OUT_CSV [--rounds N] [--seconds S] [--only A,B]
    archives.py report CSV BENCHMARKS_MD "RUN DESCRIPTION"

WORK is benches/compare's data directory (tiles/pyr and urls.txt, the
21,845-tile PNG pyramid). The same tiles are written once as an MBTiles file
(Python's sqlite3, rows from the bottom) and as a PMTiles archive (the
`pmtiles` package's writer, with PMTILES_PYTHON) under WORK/archives. Then,
in turns per round, each server is started alone on 127.0.0.1 with one
worker, warmed with every tile in order, and measured with wrk (1 thread,
64 connections, random tiles, tiles.lua's fixed seed): requests per second of
200 answers, p99, and the server's CPU (all its processes, /proc) per
request. Servers:

  tessera-directory  tessera over tiles/pyr (its directory row, the reference)
  tessera-mbtiles    tessera over archives/mbtiles/pyr.mbtiles
  tessera-pmtiles    tessera over archives/pmtiles/pyr.pmtiles
  martin-mbtiles     martin (only its mbtiles and pmtiles features) over the same MBTiles file
  martin-pmtiles     martin over the same PMTiles archive

Before measuring, one tile of each server is compared with the pyramid's file.
Writes one CSV row per (round, server, metric); report.py's archives table
reads it. Progress goes to stderr.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[archives {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tiles(work):
    """(z, x, y, path) of every pyramid tile, from urls.txt."""
    out = []
    with open(os.path.join(work, "urls.txt")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            z, x, y = line[len("/tiles/pyr/") : -len(".png")].split("/")
            out.append((int(z), int(x), int(y), os.path.join(work, line[1:])))
    return out


def make_archives(work, pmpy):
    base = os.path.join(work, "archives")
    mb = os.path.join(base, "mbtiles", "pyr.mbtiles")
    pm = os.path.join(base, "pmtiles", "pyr.pmtiles")
    done = os.path.join(base, ".done")
    if os.path.exists(done):
        return mb, pm
    os.makedirs(os.path.dirname(mb), exist_ok=True)
    os.makedirs(os.path.dirname(pm), exist_ok=True)
    for p in (mb, pm):
        if os.path.exists(p):
            os.remove(p)
    log("writing the pyramid as MBTiles and PMTiles")
    conn = sqlite3.connect(mb)
    conn.executescript(
        "CREATE TABLE metadata (name TEXT, value TEXT);"
        "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);"
        "CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);"
    )
    meta = {"name": "pyr", "format": "png", "minzoom": "0", "maxzoom": "7", "bounds": "-180,-85.0511,180,85.0511"}
    conn.executemany("INSERT INTO metadata VALUES (?, ?)", meta.items())
    for z, x, y, path in tiles(work):
        with open(path, "rb") as f:
            conn.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, (1 << z) - 1 - y, f.read()))
    conn.commit()
    conn.close()
    script = """
import sqlite3, sys
import pmtiles.convert
pmtiles.convert.mbtiles_to_pmtiles(sys.argv[1], sys.argv[2], maxzoom=None)
"""
    subprocess.run([pmpy, "-c", script, mb, pm], check=True)
    open(done, "w").close()
    return mb, pm


def procstat(what, pgid):
    out = subprocess.run([sys.executable, os.path.join(HERE, "procstat.py"), what, str(pgid)], capture_output=True, text=True)
    return float(out.stdout.strip() or 0)


def fetch(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


class Server:
    def __init__(self, name, cmd, base, prefix, suffix, tmp):
        self.name, self.base, self.prefix, self.suffix = name, base, prefix, suffix
        self.err = open(os.path.join(tmp, f"{name}.err"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.err, stderr=self.err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start: see {self.err.name}")
            try:
                if fetch(self.url(0, 0, 0))[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{name} did not answer within 300 s")

    def url(self, z, x, y):
        return f"{self.base}{self.prefix}/{z}/{x}/{y}{self.suffix}"

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.err.close()


def open_files():
    """The descriptor cache's size: below the open-file limit (raised to the
    hard limit), with room for connections and the catalog, as
    benches/compare's bench_limits leaves."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    return max(1024, min(hard, 65536) - 2048)


def start(name, args, tmp):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work, tessera, martin, mb, pm = args
    state = os.path.join(tmp, f"state-{name}")
    conf = os.path.join(tmp, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(f"[cache]\nmax_open_files = {open_files()}\n[http]\nworkers = 1\n")
    logs = os.path.join(tmp, "logs")
    os.makedirs(logs, exist_ok=True)
    roots = {
        "tessera-directory": os.path.join(work, "tiles"),
        "tessera-mbtiles": os.path.dirname(mb),
        "tessera-pmtiles": os.path.dirname(pm),
    }
    if name.startswith("tessera"):
        cmd = [tessera, "serve", "--config", conf, "--listen", f"127.0.0.1:{port}", "--tiles", roots[name],
               "--logs", logs, "--state", state]
        return Server(name, cmd, base, "/tiles/pyr", ".png", tmp)
    source = mb if name == "martin-mbtiles" else pm
    cmd = [martin, "--listen-addresses", f"127.0.0.1:{port}", "--workers", "1", source]
    return Server(name, cmd, base, "/pyr", "", tmp)


def wrk(server, urls, conns, seconds, mode):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s",
         os.path.join(HERE, "tiles.lua"), server.base, "--", urls, mode],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    req, dur, _p50, p99, c, rd, wr, st, to = (int(v) for v in line.split()[1:])
    return req, dur, p99, c + rd + wr + to, st


def measure(argv):
    work, tessera, martin, pmpy, csv_path = argv[:5]
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 2
    seconds = int(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 10
    mb, pm = make_archives(work, pmpy)
    # tessera copies small bodies of files modified in the last 60 s instead
    # of sending them by sendfile (they may be being rewritten in place):
    # data just written would measure that path, not the steady one.
    newest = max(os.stat(p).st_mtime for p in (mb, pm, os.path.join(work, "urls.txt")))
    if time.time() - newest < 61:
        log(f"waiting {61 - (time.time() - newest):.0f} s for the data to be a minute old")
        time.sleep(61 - (time.time() - newest))
    tmp = subprocess.run(["mktemp", "-d", "/tmp/tessera-archives.XXXXXX"], capture_output=True, text=True).stdout.strip()
    all_tiles = tiles(work)
    urls = {}
    for kind, prefix, suffix in (("tessera", "/tiles/pyr", ".png"), ("martin", "/pyr", "")):
        urls[kind] = os.path.join(tmp, f"urls-{kind}.txt")
        with open(urls[kind], "w") as f:
            f.writelines(f"{prefix}/{z}/{x}/{y}{suffix}\n" for z, x, y, _ in all_tiles)
    names = ["tessera-directory", "tessera-mbtiles", "tessera-pmtiles", "martin-mbtiles", "martin-pmtiles"]
    if "--only" in argv:
        names = argv[argv.index("--only") + 1].split(",")
    rows = []
    for r in range(1, rounds + 1):
        for name in names:
            server = start(name, (work, tessera, martin, mb, pm), tmp)
            try:
                z, x, y, path = all_tiles[len(all_tiles) // 2]
                status, body = fetch(server.url(z, x, y))
                with open(path, "rb") as f:
                    if status != 200 or body != f.read():
                        raise SystemExit(f"{name}: tile {z}/{x}/{y} is not the pyramid's file")
                u = urls["martin" if name.startswith("martin") else "tessera"]
                wrk(server, u, 16, max(2, seconds // 2), "seq")
                c0 = procstat("cpu", server.proc.pid)
                req, dur, p99, errors, non2xx = wrk(server, u, 64, seconds, "random")
                c1 = procstat("cpu", server.proc.pid)
                rss = procstat("rss", server.proc.pid)
            finally:
                server.stop()
            ok = req - non2xx
            rps = ok / (dur / 1e6)
            cpu_us = (c1 - c0) / max(ok, 1) * 1e6
            log(f"round {r}: {name}: {rps:,.0f} req/s, p99 {p99 / 1000:.2f} ms, {cpu_us:.1f} µs CPU/request, "
                f"non-2xx {non2xx}, socket errors {errors}, RSS {rss / 1024:.0f} MiB")
            for metric, value in (("rps", f"{rps:.1f}"), ("p99_ms", f"{p99 / 1000:.3f}"), ("cpu_us", f"{cpu_us:.2f}"),
                                  ("non2xx", non2xx), ("sockerr", errors), ("rss_mib", f"{rss / 1024:.1f}")):
                rows.append(f"{r},{name},{metric},{value}")
    with open(csv_path, "w") as f:
        f.write("round,server,metric,value\n" + "\n".join(rows) + "\n")
    subprocess.run(["rm", "-rf", tmp])
    log(f"written {csv_path}")
    print(json.dumps({"csv": csv_path}))


def report(csv_path, md_path, run):
    """The table between <!-- archives:begin --> and <!-- archives:end -->:
    per server the median and range over rounds, and the issue's goals."""
    import statistics

    values = {}
    with open(csv_path) as f:
        next(f)
        for line in f:
            _r, server, metric, value = line.strip().split(",")
            values.setdefault((server, metric), []).append(float(value))
    med = lambda s, m: statistics.median(values[(s, m)])
    span = lambda s, m, fmt: "–".join(fmt(v) for v in (min(values[(s, m)]), max(values[(s, m)])))
    names = ["tessera-directory", "tessera-mbtiles", "tessera-pmtiles", "martin-mbtiles", "martin-pmtiles"]
    lines = [
        "| server | req/s (median, range) | p99 ms | server CPU µs per request | non-2xx |",
        "|---|---|---|---|---|",
    ]
    for s in names:
        lines.append(
            f"| {s} | {med(s, 'rps'):,.0f} ({span(s, 'rps', lambda v: f'{v:,.0f}')}) | {med(s, 'p99_ms'):.2f} "
            f"| {med(s, 'cpu_us'):.1f} ({span(s, 'cpu_us', lambda v: f'{v:.1f}')}) | {sum(values[(s, 'non2xx')]):.0f} |"
        )
    goals = []
    for kind in ("mbtiles", "pmtiles"):
        t, m = f"tessera-{kind}", f"martin-{kind}"
        cpu = med(t, "cpu_us") / med(m, "cpu_us")
        rps = med(t, "rps") / med(m, "rps")
        goals.append(f"| {kind}: CPU per request, tessera / martin | {cpu:.2f} | at most 0.6 | {'met' if cpu <= 0.6 else 'not met'} |")
        goals.append(f"| {kind}: req/s, tessera / martin | {rps:.2f} | at least 1.6 | {'met' if rps >= 1.6 else 'not met'} |")
    own = med("tessera-pmtiles", "rps") / med("tessera-directory", "rps")
    goals.append(f"| PMTiles req/s / tessera's directory row | {own:.2f} | at least 0.9 | {'met' if own >= 0.9 else 'not met'} |")
    block = "\n".join(
        [f"Run: {run}; CSV `{os.path.relpath(csv_path, os.path.dirname(os.path.dirname(md_path)))}`.", ""]
        + lines
        + ["", "| goal (issue 18) | measured | goal | |", "|---|---|---|---|"]
        + goals
    )
    with open(md_path) as f:
        text = f.read()
    begin, end = "<!-- archives:begin -->", "<!-- archives:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    else:
        text += f"\n{begin}\n{block}\n{end}\n"
    with open(md_path, "w") as f:
        f.write(text)
    print(block)


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        measure(sys.argv[2:])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:5])
    else:
        raise SystemExit(__doc__)
