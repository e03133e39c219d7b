#!/usr/bin/env python3
"""Freshness prober: how stale can a server's answer be after an atomic replace?

A writer thread replaces N tiles in turn by atomic rename (a temporary file in
the same directory, then os.replace) every INTERVAL ms. Every version's body
starts with b"v=<n>;" and is 8-40 KiB long; its bytes are a function of
(tile, version), so a body can also be checked whole. The writer records when
each version was superseded (the moment os.replace of the next version
returned). Reader threads, each with its own keep-alive connection, request
random tiles of the set, recording when each request was sent.

A response is stale by more than 50 ms when the version it carries had been
superseded more than 50 ms before the request was sent. Both clocks err in the
server's favour (the superseded time is taken after the rename returned, the
send time before the request is written), so the count is a lower bound.

  fresh.py restore DIR N                 write version 0 of tiles 0..N-1
  fresh.py probe --port P --dir DIR --prefix /tiles/fresh/7/0/ [--tiles 20]
           [--interval-ms 5] [--readers 8] [--seconds 8]
      prints one JSON object; restores version 0 when done
"""
import argparse
import http.client
import json
import os
import random
import re
import sys
import threading
import time

PAD = random.Random(7).randbytes(96 * 1024)
VERSION = re.compile(rb"v=(\d+);")


def content(tile, ver):
    size = random.Random(tile * 1_000_003 + ver).randrange(8 * 1024, 40 * 1024 + 1)
    head = b"v=%d;" % ver
    off = (ver * 7919 + tile * 104_729) % (len(PAD) - 41 * 1024)
    return head + PAD[off : off + size - len(head)]


def replace(d, tile, ver):
    tmp = os.path.join(d, f".tmp-{tile}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, content(tile, ver))
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(d, f"{tile}.png"))


def restore(d, n):
    os.makedirs(d, exist_ok=True)
    for tile in range(n):
        replace(d, tile, 0)


def probe(a):
    sys.setswitchinterval(0.0005)
    stop = threading.Event()
    superseded = {}  # (tile, version) -> monotonic time its successor was in place
    writes = [0]

    def writer():
        cur = [0] * a.tiles
        n = 0
        nxt = time.monotonic()
        while not stop.is_set():
            tile = n % a.tiles
            replace(a.dir, tile, cur[tile] + 1)
            superseded[(tile, cur[tile])] = time.monotonic()
            cur[tile] += 1
            n += 1
            nxt += a.interval_ms / 1000
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()
        writes[0] = n

    results = [[] for _ in range(a.readers)]
    counts = [{"non200": 0, "errors": 0, "corrupt": 0, "statuses": {}} for _ in range(a.readers)]

    def reader(i, end):
        rng = random.Random(1000 + i)
        conn = http.client.HTTPConnection(a.host, a.port, timeout=5)
        out, c = results[i], counts[i]
        while time.monotonic() < end:
            tile = rng.randrange(a.tiles)
            sent = time.monotonic()
            try:
                conn.request("GET", f"{a.prefix}{tile}.png")
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                c["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(a.host, a.port, timeout=5)
                time.sleep(0.001)
                continue
            if r.status != 200:
                c["non200"] += 1
                c["statuses"][r.status] = c["statuses"].get(r.status, 0) + 1
                continue
            m = VERSION.match(body)
            if not m:
                c["corrupt"] += 1
                continue
            ver = int(m.group(1))
            if body != content(tile, ver):
                c["corrupt"] += 1
            out.append((tile, ver, sent))
        conn.close()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    time.sleep(0.2)  # every tile has been replaced at least once before reading starts
    t0 = time.monotonic()
    end = t0 + a.seconds
    rs = [threading.Thread(target=reader, args=(i, end), daemon=True) for i in range(a.readers)]
    for r in rs:
        r.start()
    for r in rs:
        r.join(a.seconds + 30)
    stop.set()
    w.join(10)
    elapsed = time.monotonic() - t0
    restore(a.dir, a.tiles)

    total = stale = 0
    worst = 0.0
    for out in results:
        for tile, ver, sent in out:
            total += 1
            t = superseded.get((tile, ver))
            if t is not None and sent > t:
                age = sent - t
                worst = max(worst, age)
                if age > 0.050:
                    stale += 1
    summary = {
        "total": total,
        "stale50": stale,
        "worst_ms": round(worst * 1000, 1),
        "non200": sum(c["non200"] for c in counts),
        "non200_statuses": {str(k): sum(c["statuses"].get(k, 0) for c in counts) for k in sorted({k for c in counts for k in c["statuses"]})},
        "errors": sum(c["errors"] for c in counts),
        "corrupt": sum(c["corrupt"] for c in counts),
        "writes": writes[0],
        "write_interval_ms": round((elapsed + 0.2) * 1000 / max(1, writes[0]), 2),
        "seconds": round(elapsed, 2),
    }
    print(json.dumps(summary))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "restore":
        restore(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["probe"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--tiles", type=int, default=20)
    p.add_argument("--interval-ms", type=float, default=5)
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8)
    probe(p.parse_args())


if __name__ == "__main__":
    main()
