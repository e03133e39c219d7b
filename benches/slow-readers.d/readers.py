#!/usr/bin/env python3
"""Slow readers for benches/slow-readers: N connections to one server on
127.0.0.1, each asking for a large file and reading it slowly, and the CPU
that the server's processes (one process group) spend over a fixed window
while the readers wait.

  readers.py --port P --pgid G --paths /a,/b --size BYTES --phase PHASE
             [--readers 200] [--window 20] [--settle 2]

Phases (what the readers do before and during the window):
  idle    no connection at all: the server's own background cost
  stream  GET the whole file, then read RATE bytes per second from the start
          (4 KB/s: 1 KiB every 250 ms), far from the end during the window
  tail    GET a Range of the last RANGE bytes (2 MiB, so the answer is over
          1 MiB, as a resumed download), read it at once down to its last
          TAIL bytes (64 KiB, less than the server's socket then holds), then
          1 KB/s: the server has handed (nearly) the whole answer to the
          kernel and waits for it to be acknowledged

Every reader's socket has SO_RCVBUF 4096 and TCP_MAXSEG 1448 (set before
connect), as a modem's small window over a link of MTU 1500. With loopback's
64 KiB segments the server's send buffer autotunes to 4 MiB, and a reader at
4 KB/s would need minutes to free the third of it after which the kernel
reports the socket writable again: every server would drop it as stalled.

The window starts once every reader is in position (stream: 16 KiB of body
read; tail: in its tail) plus SETTLE seconds, and ends WINDOW seconds later.
Prints one JSON object: server and client CPU seconds over the window, the
readers in position, those the server dropped before or during the window,
the body bytes read during it, and the server's sockets that still had
unacknowledged or unsent bytes (Send-Q > 0) at the window's start.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "compare.d"))
import procstat  # noqa: E402  (compare's: utime+stime of a process group)

RCVBUF = 4096
MSS = 1448
STREAM_RATE = 4096  # bytes per second per reader
STREAM_POSITION = 16 * 1024  # body bytes read before a stream reader counts as in position
TAIL_RANGE = 2 * 1024 * 1024
TAIL = 64 * 1024
TAIL_RATE = 1024
TICK = 0.25  # seconds between two reads of a slow reader
CONNECT_AT_ONCE = 50
POSITION_DEADLINE = 120.0  # seconds for every reader to get in position


def server_cpu(pgid):
    return sum(t for _, t in procstat.members(pgid)) / procstat.TICK


def own_cpu():
    t = os.times()
    return t.user + t.system


class Reader:
    def __init__(self):
        self.positioned = asyncio.Event()
        self.body = 0  # body bytes read
        self.length = None
        self.dropped_at = None  # time.monotonic() when the server closed before the end
        self.error = None


async def recv(loop, sock, n):
    data = await loop.sock_recv(sock, n)
    if not data:
        raise ConnectionError("closed by the server")
    return data


async def reader(r, loop, port, path, phase, size, gate):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    sock.setblocking(False)
    try:
        async with gate:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if phase == "tail":
                head += f"Range: bytes={size - TAIL_RANGE}-\r\n"
            await loop.sock_sendall(sock, (head + "\r\n").encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await recv(loop, sock, 4096)
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        want = 206 if phase == "tail" else 200
        if status != want:
            raise RuntimeError(f"status {status}, expected {want}")
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                r.length = int(v)
        if r.length is None:
            raise RuntimeError("no Content-Length")
        r.body = len(rest)
        if phase == "tail":
            while r.body < r.length - TAIL:
                r.body += len(await recv(loop, sock, min(65536, r.length - TAIL - r.body)))
            rate, position = TAIL_RATE, r.body
        else:
            rate, position = STREAM_RATE, STREAM_POSITION
        per_tick = int(rate * TICK)
        # Readers' ticks are spread over the tick, as independent devices'.
        await asyncio.sleep(random.uniform(0, TICK))
        next_at = loop.time()
        while r.body < r.length:
            if r.body >= position:
                r.positioned.set()
            r.body += len(await recv(loop, sock, min(per_tick, r.length - r.body)))
            next_at += TICK
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    except ConnectionError as e:
        r.dropped_at = time.monotonic()
        r.error = str(e)
    except Exception as e:  # noqa: BLE001  (reported, not raised: one reader must not end the run)
        r.error = f"{type(e).__name__}: {e}"
    finally:
        r.positioned.set()
        sock.close()


def queued_sockets(port):
    """Server sockets on PORT with Send-Q > 0 (bytes not yet acknowledged)."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    return sum(1 for line in out.splitlines() if len(line.split()) >= 2 and int(line.split()[1]) > 0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pgid", type=int, required=True)
    ap.add_argument("--paths", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--phase", choices=["idle", "stream", "tail"], required=True)
    ap.add_argument("--readers", type=int, default=200)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=2.0)
    a = ap.parse_args()
    loop = asyncio.get_running_loop()
    paths = a.paths.split(",")
    readers, tasks = [], []
    if a.phase != "idle":
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        for i in range(a.readers):
            r = Reader()
            readers.append(r)
            tasks.append(asyncio.create_task(reader(r, loop, a.port, paths[i % len(paths)], a.phase, a.size, gate)))
        try:
            await asyncio.wait_for(asyncio.gather(*(r.positioned.wait() for r in readers)), POSITION_DEADLINE)
        except asyncio.TimeoutError:
            pass
    positioned = sum(1 for r in readers if r.positioned.is_set() and r.error is None)
    await asyncio.sleep(a.settle)
    queued = queued_sockets(a.port) if readers else 0
    start, s0, c0 = time.monotonic(), server_cpu(a.pgid), own_cpu()
    b0 = sum(r.body for r in readers)
    await asyncio.sleep(a.window)
    end, s1, c1 = time.monotonic(), server_cpu(a.pgid), own_cpu()
    b1 = sum(r.body for r in readers)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    errors = sorted({r.error for r in readers if r.error and r.dropped_at is None})
    print(
        json.dumps(
            {
                "phase": a.phase,
                "readers": len(readers),
                "positioned": positioned,
                "window_s": round(end - start, 2),
                "server_cpu_s": round(s1 - s0, 3),
                "client_cpu_s": round(c1 - c0, 3),
                "dropped_before": sum(1 for r in readers if r.dropped_at is not None and r.dropped_at < start),
                "dropped_during": sum(1 for r in readers if r.dropped_at is not None and start <= r.dropped_at <= end),
                "bytes_in_window": b1 - b0,
                "queued_at_start": queued,
                "errors": errors[:5],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
