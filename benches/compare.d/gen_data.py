#!/usr/bin/env python3
"""Generates the benchmark's data set, deterministically, into a work dir.

  tiles/pyr/{z}/{x}/{y}.png   z0..z7: 21,845 tiles, sizes lognormal (median 12 KB,
                              mean about 16 KB) clamped to [1 KiB, 80 KiB]; a PNG
                              signature followed by seeded random bytes
  tiles/fresh/7/0/{n}.png     the freshness prober's tiles (version 0)
  logs/dev/LOG_NAME           a plain log of RFC 3339-prefixed lines, exactly LOG_BYTES long
                              (big.log, 1 GiB, for the record; quick.log, 256 MiB, for --quick)
  urls.txt                    every pyramid tile's URL path, one a line

Usage: gen_data.py WORKDIR LOG_NAME LOG_BYTES
Reuses what is already there: the pyramid when WORKDIR/.pyramid-done exists,
the log when it already has LOG_BYTES bytes.
"""
import math
import os
import random
import sys
import time

SEED = 42
MAXZ = 7
MIN_SIZE, MAX_SIZE = 1024, 80 * 1024
MEDIAN, MEAN = 12000, 16000
PNG_SIG = b"\x89PNG\r\n\x1a\n"
FRESH_TILES = 20


def log(msg):
    print(f"gen_data: {msg}", file=sys.stderr, flush=True)


def pyramid(work):
    done = os.path.join(work, ".pyramid-done")
    if os.path.exists(done):
        return
    t0 = time.monotonic()
    rng = random.Random(SEED)
    mu = math.log(MEDIAN)
    sigma = math.sqrt(2 * math.log(MEAN / MEDIAN))
    urls, total = [], 0
    for z in range(MAXZ + 1):
        n = 1 << z
        for x in range(n):
            d = os.path.join(work, "tiles", "pyr", str(z), str(x))
            os.makedirs(d, exist_ok=True)
            for y in range(n):
                size = min(MAX_SIZE, max(MIN_SIZE, int(rng.lognormvariate(mu, sigma))))
                body = PNG_SIG + rng.randbytes(size - len(PNG_SIG))
                with open(os.path.join(d, f"{y}.png"), "wb") as f:
                    f.write(body)
                urls.append(f"/tiles/pyr/{z}/{x}/{y}.png")
                total += size
    with open(os.path.join(work, "urls.txt"), "w") as f:
        f.write("\n".join(urls) + "\n")
    with open(done, "w") as f:
        f.write(f"{len(urls)} tiles, {total} bytes, mean {total / len(urls):.0f}\n")
    log(f"pyramid: {len(urls)} tiles, mean {total / len(urls):.0f} bytes, {time.monotonic() - t0:.1f} s")


def fresh(work):
    # Version-0 content of the freshness tiles; fresh.py --restore writes the same.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fresh as fr  # noqa: E402
    fr.restore(os.path.join(work, "tiles", "fresh", "7", "0"), FRESH_TILES)


def big_log(work, name, size):
    path = os.path.join(work, "logs", "dev", name)
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    t0 = time.monotonic()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = random.Random(SEED + 1)
    base = 1_795_000_000  # 2026-11-18T...Z, seconds
    kinds = ["INFO feeder voltage_kv=%.3f current_a=%.1f", "WARN pump pressure_bar=%.3f flow_m3h=%.1f",
             "INFO breaker state=closed load_pct=%.3f temp_c=%.1f"]
    tmp = os.path.join(os.path.dirname(path), f".{name}.tmp")  # dot name: never indexed
    written, i, last_s, stamp = 0, 0, None, ""
    with open(tmp, "wb") as f:
        while written < size:
            lines = []
            for _ in range(4096):
                t = base * 1000 + i * 7  # one line every 7 ms
                s, ms = divmod(t, 1000)
                if s != last_s:
                    last_s, stamp = s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
                ts = f"{stamp}.{ms:03d}Z"
                lines.append(f"{ts} dev-{i % 97:02d} " + kinds[i % 3] % (rng.random() * 20, rng.random() * 500) + "\n")
                i += 1
            chunk = "".join(lines).encode()
            if written + len(chunk) > size:
                # End on a whole line: cut the chunk at a newline, pad the last line.
                chunk = chunk[: size - written]
                cut = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
                chunk = chunk[:cut] + b"#" * (len(chunk) - cut - 1) + b"\n" if len(chunk) - cut >= 1 else chunk
                chunk = chunk[: size - written]
            f.write(chunk)
            written += len(chunk)
    os.replace(tmp, path)
    log(f"log: {size} bytes in {time.monotonic() - t0:.1f} s")


def main():
    work, name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(work, exist_ok=True)
    pyramid(work)
    fresh(work)
    big_log(work, name, size)


if __name__ == "__main__":
    main()
