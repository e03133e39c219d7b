"""The fleet rig of benches/fleet (see its header): two tessera nodes on
127.0.0.2 and 127.0.0.3 serving one tiles root over sshfs (a local sshd on
loopback stands in for the file server), a writer replacing tiles by rename
on the storage side, and clients reading the tiles through Varnish (with and
without invalidation), through nginx proxy_cache, or from one node directly.
Counts and ratios only: stale answers, cache hits, errors.

Python 3 standard library only. Every process it starts leads its own process
group, listed in WORK/pgids (benches/fleet's trap kills what is left), and is
stopped, and every mount undone, in a `finally`."""

import argparse
import bisect
import gzip
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

NODES = [("node_a", "127.0.0.2"), ("node_b", "127.0.0.3")]
PNG = b"\x89PNG\r\n\x1a\n"
VERSION = re.compile(rb"v=(\d+)")
SSHFS_OPTS = "cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0"


def log(*a):
    print("[fleet %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class RigError(Exception):
    """The rig itself failed (setup, a process that would not start)."""


def free_port(hosts=("127.0.0.1",)):
    """A port free on every one of `hosts`."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RigError("no free port")


def http_get(host, port, path, headers=None, timeout=5.0, method="GET", source=None):
    """(status, headers as a lower-case dict, body); raises OSError and friends."""
    c = http.client.HTTPConnection(host, port, timeout=timeout, source_address=source)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def wait_for(what, test, seconds, proc=None):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RigError(f"{what}: the process exited ({proc.returncode})")
        try:
            if test():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RigError(f"{what}: not ready within {seconds} s")


class Rig:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.procs = {}  # name -> Popen
        self.mounts = []
        self.tiles = []  # "z/x/y"
        self.writes = {}  # tile -> [(version, monotonic time written)]
        self.version = {}  # tile -> current version on storage
        self.secret = "fleet-" + os.urandom(8).hex()
        self.node_port = None
        self.caches_supported = None

    # ---- processes ------------------------------------------------------
    def start(self, name, argv, **kw):
        out = open(os.path.join(self.work, "out", name + ".out"), "ab")
        err = open(os.path.join(self.work, "out", name + ".err"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        out.close()
        err.close()
        self.procs[name] = p
        with open(os.path.join(self.work, "pgids"), "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop(self, name, sig=signal.SIGTERM, wait=10):
        p = self.procs.pop(name, None)
        if p is None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
        # the group may hold children (varnishd's child, nginx's workers)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cleanup(self):
        for name in [n for n in self.procs if n.startswith(("varnish", "nginx", "node"))]:
            self.stop(name)
        for m in reversed(self.mounts):
            if subprocess.run(["fusermount", "-u", m], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", m], capture_output=True)
        self.mounts = []
        for name in list(self.procs):
            self.stop(name)

    def tail(self, name, n=15):
        try:
            with open(os.path.join(self.work, "out", name + ".err"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # ---- storage, sshd, sshfs -------------------------------------------
    def make_storage(self):
        a = self.a
        root = os.path.join(self.work, "storage", "tiles")
        for z in range(a.maxzoom + 1):
            for x in range(1 << z):
                os.makedirs(os.path.join(root, "grid", str(z), str(x)), exist_ok=True)
                for y in range(1 << z):
                    t = f"{z}/{x}/{y}"
                    self.tiles.append(t)
                    self.version[t] = 0
                    with open(os.path.join(root, "grid", str(z), str(x), f"{y}.png"), "wb") as f:
                        f.write(self.body(t, 0))
        # A gzipped "vector" tile, for the Accept-Encoding checks.
        os.makedirs(os.path.join(root, "vec", "0", "0"), exist_ok=True)
        with open(os.path.join(root, "vec", "0", "0", "0.pbf"), "wb") as f:
            f.write(gzip.compress(b"fleet vector tile " * 40, mtime=0))
        logs = os.path.join(self.work, "logs", "dev")
        os.makedirs(logs)
        with open(os.path.join(logs, "live.log"), "w") as f:
            f.write("2026-11-20T06:00:00Z first line\n")
        log(f"storage: {len(self.tiles)} tiles (grid, z 0..{a.maxzoom}) and vec/0/0/0.pbf")

    @staticmethod
    def body(tile, v):
        return PNG + f"fleet tile={tile} v={v}\n".encode()

    def start_sshd(self):
        d = os.path.join(self.work, "ssh")
        os.makedirs(d)
        for k in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, k)], check=True)
        with open(os.path.join(d, "client.pub")) as src, open(os.path.join(d, "authorized_keys"), "w") as dst:
            dst.write(src.read())
        os.makedirs("/run/sshd", exist_ok=True)
        self.ssh_port = free_port()
        conf = os.path.join(d, "sshd_config")
        with open(conf, "w") as f:
            f.write(f"""Port {self.ssh_port}
ListenAddress 127.0.0.1
HostKey {d}/host
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
PidFile {d}/sshd.pid
Subsystem sftp internal-sftp
MaxSessions 16
MaxStartups 32
LogLevel ERROR
""")
        subprocess.run(["/usr/sbin/sshd", "-t", "-f", conf], check=True)
        p = self.start("sshd", ["/usr/sbin/sshd", "-f", conf, "-D", "-e"])

        def up():
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=1) as s:
                return s.recv(4).startswith(b"SSH")
        wait_for("sshd", up, 10, p)

    def mount(self, name):
        mnt = os.path.join(self.work, "mnt", name)
        os.makedirs(mnt)
        key = os.path.join(self.work, "ssh", "client")
        argv = ["sshfs", "-f", "-p", str(self.ssh_port),
                "-o", f"IdentityFile={key},IdentitiesOnly=yes,BatchMode=yes,StrictHostKeyChecking=no,"
                      f"UserKnownHostsFile=/dev/null,LogLevel=ERROR,ServerAliveInterval=5,{SSHFS_OPTS}",
                f"root@127.0.0.1:{self.work}/storage", mnt]
        p = self.start("sshfs-" + name, argv)
        self.mounts.append(mnt)
        wait_for(f"sshfs mount {mnt}", lambda: os.path.ismount(mnt) and os.path.exists(os.path.join(mnt, "tiles", "grid")), 20, p)
        return mnt

    # ---- tessera nodes ----------------------------------------------------
    def node_config(self, name, addr, invalidate_to=None):
        d = os.path.join(self.work, name)
        os.makedirs(os.path.join(d, "state"), exist_ok=True)
        conf = os.path.join(d, "invalidate.toml" if invalidate_to else "plain.toml")
        text = f"""listen = "{addr}:{self.node_port}"
state = "{d}/state"

[[tiles]]
path = "{self.work}/mnt/{name}/tiles"
watch = "poll"
poll_interval_ms = {self.a.poll_ms}
cache_control = "public, max-age=60"
{f'etag = "{self.a.etag}"' if getattr(self.a, "etag", None) else ""}

[[logs]]
path = "{self.work}/logs"

[http]
workers = 1
"""
        if invalidate_to:
            text += f"""
[[caches]]
url = "{invalidate_to}"
protocol = "ban"
secret_header = "X-Tessera-Secret"
secret_file = "{self.work}/varnish-secret"
"""
        with open(conf, "w") as f:
            f.write(text)
        return conf

    def check_caches_support(self):
        """Whether this tessera accepts [[caches]] (the invalidation side)."""
        with open(os.path.join(self.work, "varnish-secret"), "w") as f:
            f.write(self.secret)
        conf = self.node_config("node_a", "127.0.0.2", "http://127.0.0.1:9")
        r = subprocess.run([self.a.bin, "check", "--config", conf], capture_output=True, text=True)
        self.caches_supported = r.returncode == 0
        self.caches_refusal = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else []
        return self.caches_supported

    def start_nodes(self, invalidate_to=None):
        for name, addr in NODES:
            self.start_node(name, addr, invalidate_to)
        for name, addr in NODES:
            self.wait_node(name, addr)

    def start_node(self, name, addr, invalidate_to=None):
        conf = self.node_config(name, addr, invalidate_to)
        self.start(name, [self.a.bin, "serve", "--config", conf])

    def wait_node(self, name, addr, seconds=60):
        def ready():
            return http_get(addr, self.node_port, "/readyz", timeout=2)[0] == 200
        try:
            wait_for(f"tessera {name} ({addr}:{self.node_port})", ready, seconds, self.procs.get(name))
        except RigError:
            log(self.tail(name))
            raise

    def stop_nodes(self):
        for name, _ in NODES:
            self.stop(name)

    # ---- Varnish ------------------------------------------------------------
    def render_vcl(self):
        src = open(self.a.vcl).read()
        block = ["# >>> fleet: nodes (written by benches/fleet)"]
        for name, addr in NODES:
            block.append(f"""backend {name} {{
    .host = "{addr}";
    .port = "{self.node_port}";
    .probe = tessera_ready;
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 60s;
}}""")
        block.append("acl tessera_nodes {\n    \"127.0.0.1\";\n" + "".join(f"    \"{a}\";\n" for _, a in NODES) + "}")
        block.append("sub tessera_add_nodes {\n" + "".join(f"    fleet.add_backend({n});\n" for n, _ in NODES) + "}")
        picks = []
        for i, (n, _) in enumerate(NODES):
            kw = "if" if i == 0 else "} elsif"
            picks.append(f"    {kw} (bereq.http.X-Tessera-Failed != \"{n}\" && std.healthy({n})) {{\n        set bereq.backend = {n};\n")
        block.append("sub tessera_other_node {\n" + "".join(picks) + "    }\n}")
        block.append("# <<< fleet: nodes")
        src, n1 = re.subn(r"# >>> fleet: nodes.*?# <<< fleet: nodes", lambda m: "\n".join(block), src, flags=re.S)
        src, n2 = re.subn(r"# >>> fleet: secret.*?# <<< fleet: secret",
                          lambda m: f"# >>> fleet: secret\n    set req.http.X-Tessera-Secret-Want = \"{self.secret}\";\n# <<< fleet: secret",
                          src, flags=re.S)
        if n1 != 1 or n2 != 1:
            raise RigError(f"{self.a.vcl}: the fleet markers are missing")
        out = os.path.join(self.work, "varnish.vcl")
        with open(out, "w") as f:
            f.write(src)
        return out

    def start_varnish(self, port=None, name="varnish"):
        """varnishd on `port` (chosen before the nodes start when they are to
        send it their BANs), as root without a jail (-j none)."""
        vcl = self.render_vcl()
        vdir = os.path.join(self.work, name + "-n")
        if os.path.isdir(vdir):
            subprocess.run(["rm", "-rf", vdir])
        self.vdir = vdir
        self.proxy_port = port or free_port()
        argv = ["varnishd", "-F", "-j", "none", "-n", vdir, "-a", f"127.0.0.1:{self.proxy_port}",
                "-T", "127.0.0.1:0", "-f", vcl, "-s", "malloc,64m", "-p", "thread_pools=1",
                "-p", "thread_pool_min=20"]
        p = self.start(name, argv)

        def up():
            return http_get("127.0.0.1", self.proxy_port, "/tiles/grid/0/0/0.png", timeout=2)[0] == 200
        try:
            wait_for("varnishd", up, 60, p)
        except RigError:
            log(self.tail(name, 30))
            raise
        return self.proxy_port

    def varnishadm(self, *cmd):
        r = subprocess.run(["varnishadm", "-n", self.vdir, *cmd], capture_output=True, text=True, timeout=10)
        return r.stdout

    def vbe_counters(self):
        """{backend name: fetches} from varnishstat's VBE.*.req."""
        r = subprocess.run(["varnishstat", "-n", self.vdir, "-1", "-f", "VBE.*.req"], capture_output=True, text=True, timeout=10)
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("VBE."):
                out[parts[0].split(".")[-2]] = int(parts[1])
        return out

    # ---- nginx ----------------------------------------------------------------
    def start_nginx(self, use_stale_updating=False):
        d = os.path.join(self.work, "nginx")
        if os.path.isdir(d):
            subprocess.run(["rm", "-rf", d])
        os.makedirs(os.path.join(d, "cache"))
        os.makedirs(os.path.join(d, "tmp"))
        self.proxy_port = free_port()
        src = open(self.a.nginx_conf).read()
        servers = "".join(f"    server {a}:{self.node_port} max_fails=1 fail_timeout=2s;\n" for _, a in NODES)
        src, n1 = re.subn(r"# >>> fleet: nodes.*?# <<< fleet: nodes", lambda m: "# fleet nodes\n" + servers, src, flags=re.S)
        src, n2 = re.subn(r"listen 6082;", f"listen 127.0.0.1:{self.proxy_port};", src)
        src, n3 = re.subn(r"proxy_cache_path /var/cache/nginx/tessera ", f"proxy_cache_path {d}/cache ", src)
        n4 = 1
        if use_stale_updating:
            src, n4 = re.subn(r"(proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504);",
                              r"\1 updating;\n        proxy_cache_background_update on;", src, count=1)
        if (n1, n2, n3, n4) != (1, 1, 1, 1):
            raise RigError(f"{self.a.nginx_conf}: a line benches/fleet rewrites is missing")
        with open(os.path.join(d, "tessera.conf"), "w") as f:
            f.write(src)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  include {d}/tessera.conf;
}}
""")
        p = self.start("nginx", ["nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"])

        def up():
            return http_get("127.0.0.1", self.proxy_port, "/tiles/grid/0/0/0.png", timeout=2)[0] == 200
        try:
            wait_for("nginx", up, 30, p)
        except RigError:
            log(open(f"{d}/error.log").read()[-2000:])
            raise
        return self.proxy_port

    # ---- writer and clients -----------------------------------------------------
    def choose_sets(self):
        rng = random.Random(7)
        order = self.tiles[:]
        rng.shuffle(order)
        self.changing = order[: self.a.changing]
        self.steady = order[self.a.changing:]
        w = [1.0 / (i + 1) for i in range(len(self.steady))]
        self.steady_cum = []
        s = 0.0
        for x in w:
            s += x
            self.steady_cum.append(s)

    def pick(self, rng):
        if rng.random() < self.a.changing_share:
            return rng.choice(self.changing)
        return self.steady[bisect.bisect_left(self.steady_cum, rng.random() * self.steady_cum[-1])]

    def writer(self, stop):
        """Replaces changing tiles by rename on the storage side, a.write_rate a
        second; a tile is not written again within a.min_gap seconds (sshfs
        gives mtimes in whole seconds: two versions of one size within one
        second would look the same to any stat-based watcher and ETag)."""
        rng = random.Random()
        root = os.path.join(self.work, "storage", "tiles", "grid")
        last = {}
        step = 1.0 / self.a.write_rate
        nxt = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            ok = [t for t in self.changing if now - last.get(t, -1e9) >= self.a.min_gap]
            if ok:
                t = rng.choice(ok)
                v = self.version[t] + 1
                z, x, y = t.split("/")
                path = os.path.join(root, z, x, f"{y}.png")
                tmp = os.path.join(root, z, x, f".{y}.png.tmp")
                with open(tmp, "wb") as f:
                    f.write(self.body(t, v))
                os.rename(tmp, path)
                done = time.monotonic()
                self.version[t] = v
                self.writes.setdefault(t, []).append((v, done))
                last[t] = done
            nxt += step
            stop.wait(max(0.0, nxt - time.monotonic()))

    def client(self, host, port, deadline, budget, rate, out, seed):
        rng = random.Random(seed)
        conn = None
        step = 1.0 / rate
        nxt = time.monotonic()
        n = 0
        while n < budget:
            now = time.monotonic()
            if now >= deadline:
                break
            if nxt > now:
                time.sleep(nxt - now)
            nxt += step
            t = self.pick(rng)
            start = time.monotonic()
            n += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request("GET", f"/tiles/grid/{t}.png")
                r = conn.getresponse()
                body = r.read()
                m = VERSION.search(body)
                v = int(m.group(1)) if (r.status == 200 and m) else -1
                out.append((start, t, r.status, v, r.getheader("X-Cache", ""), r.getheader("X-Backend", ""), ""))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                out.append((start, t, 0, -1, "", "", type(e).__name__))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def warm(self, host, port):
        conn = http.client.HTTPConnection(host, port, timeout=5)
        bad = 0
        for t in self.tiles:
            try:
                conn.request("GET", f"/tiles/grid/{t}.png")
                r = conn.getresponse()
                r.read()
                bad += r.status != 200
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.close()
        return bad

    def staleness(self, tile, v, start):
        """Seconds since a newer version than v was written, at `start`; 0 if none."""
        for ver, w in self.writes.get(tile, ()):
            if ver == v + 1:
                return max(0.0, start - w) if w < start else 0.0
        return 0.0

    def measure(self, mode, host, port, seconds, during=None, extra_stream=None):
        """Warm-up (every tile once, not counted), then writer and clients for
        `seconds`; `during(t0, stop)` runs beside them (the node kill)."""
        bad = self.warm(host, port)
        if bad:
            log(f"{mode}: warm-up: {bad} of {len(self.tiles)} tiles did not answer 200")
        stop = threading.Event()
        writes_before = sum(len(v) for v in self.writes.values())
        wt = threading.Thread(target=self.writer, args=(stop,), daemon=True)
        records = []
        t0 = time.monotonic()
        deadline = t0 + seconds
        per = self.a.rate / self.a.clients
        budget = int(per * seconds * 1.2) + 10
        cts = [threading.Thread(target=self.client, args=(host, port, deadline, budget, per, records, hash((mode, i))), daemon=True)
               for i in range(self.a.clients)]
        wt.start()
        for c in cts:
            c.start()
        side = None
        if during is not None:
            side = threading.Thread(target=during, args=(t0, deadline), daemon=True)
            side.start()
        for c in cts:
            c.join(seconds + 30)
        if side is not None:
            side.join(60)
        stop.set()
        wt.join(5)
        writes = sum(len(v) for v in self.writes.values()) - writes_before
        return self.summarize(mode, records, writes, seconds, t0)

    def summarize(self, mode, records, writes, seconds, t0):
        bound = self.a.bound
        changing = set(self.changing)
        n = len(records)
        errors = [r for r in records if r[2] != 200]
        stale = []
        steady_total = steady_hits = 0
        caches = {}
        for start, t, status, v, xc, be, err in records:
            if status != 200:
                continue
            caches[xc or "-"] = caches.get(xc or "-", 0) + 1
            if t in changing:
                s = self.staleness(t, v, start)
                if s > 0:
                    stale.append(s)
            else:
                steady_total += 1
                steady_hits += xc in ("HIT", "STALE", "UPDATING")
        stale.sort()
        res = {
            "mode": mode,
            "seconds": seconds,
            "requests": n,
            "errors": len(errors),
            "error_kinds": sorted({(r[2], r[6]) for r in errors})[:10],
            "changing_requests": sum(1 for r in records if r[1] in changing and r[2] == 200),
            "stale_over_bound": sum(1 for s in stale if s > bound),
            "stale_over_0": len(stale),
            "stale_p50_s": round(statistics.median(stale), 3) if stale else 0.0,
            "stale_max_s": round(stale[-1], 3) if stale else 0.0,
            "steady_requests": steady_total,
            "steady_hit_ratio": round(steady_hits / steady_total, 4) if steady_total and set(caches) != {"-"} else None,
            "x_cache": caches,
            "writes": writes,
            "bound_s": bound,
        }
        hr = "n/a" if res["steady_hit_ratio"] is None else f"{100 * res['steady_hit_ratio']:.1f} %"
        log(f"{mode}: {n} requests, {res['errors']} errors, stale > {bound:g} s: {res['stale_over_bound']}, "
            f"stale > 0: {res['stale_over_0']} (p50 {res['stale_p50_s']} s, max {res['stale_max_s']} s) of "
            f"{res['changing_requests']} for changing tiles; hits on unchanged tiles {hr}; {writes} writes; X-Cache {caches}")
        return res

    # ---- the node kill ----------------------------------------------------------
    def kill_phase(self, host, port, seconds, invalidate_to):
        """During a Varnish run: node_a SIGKILLed at 30 % of the run and started
        again 3 s later; a side stream of one request every 50 ms to a URL
        Varnish has never seen (a miss: a backend fetch each) shows where
        fetches go and whether any fails."""
        marks = {}
        misses = []

        def during(t0, deadline):
            kill_at = t0 + seconds * 0.3
            stream_stop = threading.Event()

            def stream():
                i = 0
                while not stream_stop.is_set() and time.monotonic() < deadline:
                    i += 1
                    s = time.monotonic()
                    try:
                        st, h, _ = http_get(host, port, f"/tiles/grid/0/0/0.png?fleet-miss={i}", timeout=10)
                        misses.append((s, st, h.get("x-cache", ""), h.get("x-backend", ""), ""))
                    except (OSError, http.client.HTTPException) as e:
                        misses.append((s, 0, "", "", type(e).__name__))
                    stream_stop.wait(0.05)
            th = threading.Thread(target=stream, daemon=True)
            th.start()
            time.sleep(max(0, kill_at - time.monotonic()))
            marks["vbe_before"] = self.vbe_counters()
            marks["kill"] = time.monotonic()
            os.killpg(self.procs["node_a"].pid, signal.SIGKILL)
            self.procs.pop("node_a").wait()
            log("node-kill: node_a SIGKILLed")
            time.sleep(3)
            marks["restart"] = time.monotonic()
            self.start_node("node_a", "127.0.0.2", invalidate_to)
            self.wait_node("node_a", "127.0.0.2")
            marks["ready"] = time.monotonic()
            marks["vbe_ready"] = self.vbe_counters()
            log(f"node-kill: node_a restarted, ready after {marks['ready'] - marks['restart']:.2f} s")
            th.join(seconds + 10)
            marks["vbe_end"] = self.vbe_counters()
            marks["backend_list"] = self.varnishadm("backend.list")

        res = self.measure("node-kill", host, port, seconds, during=during)
        kill, ready = marks.get("kill", 0), marks.get("ready", 0)

        def phase(s):
            return "before" if s < kill else ("outage" if s < ready else "after")
        by = {}
        for s, st, xc, be, err in misses:
            p = by.setdefault(phase(s), {"requests": 0, "errors": 0, "backends": {}})
            p["requests"] += 1
            if st != 200:
                p["errors"] += 1
            else:
                p["backends"][be] = p["backends"].get(be, 0) + 1
        # Fetches after the restart, by backend, from Varnish's own counters.
        after = {k: marks.get("vbe_end", {}).get(k, 0) - marks.get("vbe_ready", {}).get(k, 0) for k in marks.get("vbe_end", {})}
        res["miss_stream"] = by
        res["fetches_after_restart"] = after
        res["both_backends_after_restart"] = len([k for k, v in after.items() if v > 0]) >= 2
        res["restart_to_ready_s"] = round(ready - marks.get("restart", ready), 2)
        res["backend_list"] = marks.get("backend_list", "")
        log(f"node-kill: miss stream {by}; Varnish fetches after the restart {after}; both served: {res['both_backends_after_restart']}")
        return res

    # ---- functional checks of the VCL and the nginx config --------------------
    def checks(self, kind, host, port):
        results = []

        def check(what, fn):
            try:
                ok, detail = fn()
            except Exception as e:  # a check must not stop the rig
                ok, detail = False, f"{type(e).__name__}: {e}"
            results.append((what, ok, detail))
            log(f"  {'ok  ' if ok else 'FAIL'} {kind}: {what}" + ("" if ok else f" ({detail})"))

        g = lambda path, h=None, **kw: http_get(host, port, path, h, **kw)
        tile = f"/tiles/grid/{self.steady[0]}.png"
        check("follow stream (/logs/dev/live.log?follow) delivers an append within 2 s", lambda: self.follow_check(host, port))
        if kind == "nginx":
            def miss_then_hit():
                fresh = f"{tile}?check={os.urandom(4).hex()}"
                s1, h1, b1 = g(fresh)
                s2, h2, b2 = g(fresh)
                return (s1 == s2 == 200 and h1.get("x-cache") == "MISS" and h1.get("x-backend", "").startswith("127.0.0.")
                        and h2.get("x-cache") == "HIT"), f"{h1} / {h2}"
            check("a new tile URL is a MISS naming its node, then a HIT", miss_then_hit)

            def inm_nginx():
                s, h, b = g(tile)
                s2, h2, b2 = g(tile, {"If-None-Match": h["etag"]})
                return s2 == 304, f"{s2} {h2}"
            check("If-None-Match with tessera's ETag: 304", inm_nginx)

            def auth_nginx():
                s, h, b = g(tile, {"Authorization": "Bearer x"})
                return h.get("x-cache") == "BYPASS", str(h)
            check("a request with Authorization bypasses the cache", auth_nginx)
            return results

        def second_is_hit():
            g(tile)
            s, h, b = g(tile)
            return s == 200 and h.get("x-cache") == "HIT" and "x-tessera-url" not in h and h.get("x-backend", "").startswith("node_"), str(h)
        check("a repeated tile is a HIT, names its backend, hides x-tessera-url", second_is_hit)

        def cors():
            s, h, b = g(tile, {"Origin": "https://map.example"})
            return h.get("access-control-allow-origin") == "*" and h.get("x-cache") == "HIT", str(h)
        check("CORS: Access-Control-Allow-Origin kept on a HIT", cors)

        def inm():
            s, h, b = g(tile)
            s2, h2, b2 = g(tile, {"If-None-Match": h["etag"]})
            return s2 == 304 and h2.get("etag") == h["etag"], f"{s2} {h2}"
        check("If-None-Match with tessera's ETag: 304 from the cache", inm)

        def rng():
            s, h, b = g(tile, {"Range": "bytes=0-3"})
            return s == 206 and b == PNG[:4], f"{s} {b!r}"
        check("Range: bytes=0-3 gives 206 and the first 4 bytes", rng)

        def auth():
            s, h, b = g(tile, {"Authorization": "Bearer x"})
            return h.get("x-cache") == "PASS", str(h)
        check("a request with Authorization is passed", auth)

        def metrics():
            s, h, b = g("/metrics")
            return s == 200 and h.get("x-cache") == "PASS", str(h)
        check("/metrics is passed", metrics)

        def gz():
            raw = open(os.path.join(self.work, "storage", "tiles", "vec", "0", "0", "0.pbf"), "rb").read()
            plain = gzip.decompress(raw)
            seen = []
            for _ in range(2):
                s1, h1, b1 = g("/tiles/vec/0/0/0.pbf", {"Accept-Encoding": "gzip, deflate, br"})
                s2, h2, b2 = g("/tiles/vec/0/0/0.pbf")
                seen.append((h1.get("x-cache"), h2.get("x-cache")))
                if not (h1.get("content-encoding") == "gzip" and b1 == raw and "accept-encoding" in h1.get("vary", "").lower()
                        and "content-encoding" not in h2 and b2 == plain and h1.get("etag") != h2.get("etag")):
                    return False, f"gzip: {h1} / plain: {h2}"
            return seen[1] == ("HIT", "HIT"), f"X-Cache {seen}"
        check("Vary: Accept-Encoding: gzip and plain variants kept apart, bodies and ETags as tessera sends", gz)

        def ban_acl():
            s, h, b = http_get(host, port, "/", {"X-Tessera-Ban": "^/nothing$", "X-Tessera-Secret": self.secret},
                               method="BAN", source=("127.0.0.9", 0))
            return s == 403, str(s)
        check("BAN from outside the ACL (127.0.0.9): 403", ban_acl)

        def ban_secret():
            s, h, b = g("/", {"X-Tessera-Ban": "^/nothing$", "X-Tessera-Secret": "wrong"}, method="BAN")
            s2, h2, b2 = g("/", {"X-Tessera-Ban": "^/nothing$"}, method="BAN")
            return s == 403 and s2 == 403, f"{s} {s2}"
        check("BAN with a wrong or no secret: 403", ban_secret)

        def ban_ok():
            g(tile)
            t2 = f"/tiles/grid/{self.steady[1]}.png"
            g(t2)
            rx = "^" + re.escape(tile).replace("/", "/") + r"(\?|$)"
            s, h, b = g("/", {"X-Tessera-Ban": rx, "X-Tessera-Secret": self.secret}, method="BAN")
            a1 = g(tile)[1].get("x-cache")
            a2 = g(t2)[1].get("x-cache")
            return s == 200 and a1 == "MISS" and a2 == "HIT", f"{s} {b!r} banned {a1} other {a2}"
        check("BAN with the secret: 200, the banned tile is a MISS, another still a HIT", ban_ok)

        def purge():
            g(tile)
            s, h, b = g(tile, {"X-Tessera-Secret": self.secret, "Host": "other.example"}, method="PURGE")
            a1 = g(tile)[1].get("x-cache")
            return s == 200 and a1 == "MISS", f"{s} then {a1}"
        check("PURGE of a tile (under another Host): 200, then a MISS", purge)

        def other_method():
            s, h, b = g("/", {"X-Tessera-Ban": "^/$"}, method="BAN", source=("127.0.0.9", 0))
            s2, h2, b2 = g(tile, method="DELETE")
            return s == 403 and s2 in (405, 404, 403), f"{s} {s2}"
        check("other methods reach tessera (DELETE refused by it), not the cache", other_method)
        return results

    def follow_check(self, host, port):
        path = os.path.join(self.work, "logs", "dev", "live.log")
        c = http.client.HTTPConnection(host, port, timeout=5)
        try:
            c.request("GET", "/logs/dev/live.log?follow")
            r = c.getresponse()
            if r.status != 200:
                return False, f"status {r.status}"
            got = b""
            while b"first line" not in got:
                chunk = r.read1(65536)
                if not chunk:
                    return False, "stream ended"
                got += chunk
            marker = f"2026-11-20T06:00:01Z marker {os.urandom(4).hex()}\n"
            time.sleep(0.2)
            t = time.monotonic()
            with open(path, "a") as f:
                f.write(marker)
            r.fp.raw._sock.settimeout(2.0) if hasattr(r.fp, "raw") and hasattr(r.fp.raw, "_sock") else None
            while marker.encode() not in got:
                if time.monotonic() - t > 2:
                    return False, "no append within 2 s"
                chunk = r.read1(65536)
                if not chunk:
                    return False, "stream ended"
                got += chunk
            return True, f"{(time.monotonic() - t) * 1000:.0f} ms"
        except socket.timeout:
            return False, "timed out"
        finally:
            c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--vcl", required=True)
    ap.add_argument("--nginx-conf", required=True)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--kill-seconds", type=float, default=15)
    ap.add_argument("--modes", default="direct,varnish-ttl,nginx,nginx-stale,varnish-invalidate,node-kill")
    ap.add_argument("--maxzoom", type=int, default=4)
    ap.add_argument("--changing", type=int, default=24, help="tiles the writer replaces")
    ap.add_argument("--changing-share", type=float, default=0.3, help="share of requests for them")
    ap.add_argument("--write-rate", type=float, default=4.0)
    ap.add_argument("--min-gap", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=300.0, help="client requests per second, all clients")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--poll-ms", type=int, default=250)
    ap.add_argument("--bound", type=float, default=1.0)
    ap.add_argument("--etag", choices=("validators", "content"), help="the tiles root's etag (default: tessera's)")
    ap.add_argument("--results", required=True)
    ap.add_argument("--doc")
    ap.add_argument("--command", default="benches/fleet")
    ap.add_argument("--redoc", help="rewrite --doc's section from this results file, and exit")
    a = ap.parse_args()
    if a.redoc:
        write_doc(a.doc, table(json.load(open(a.redoc)), a))
        return
    a.bin = os.path.abspath(a.bin)
    for d in ("out", "mnt"):
        os.makedirs(os.path.join(a.work, d), exist_ok=True)

    def on_term(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    rig = Rig(a)
    results = {"modes": [], "checks": {}, "setup": {}}
    modes = [m for m in a.modes.split(",") if m]
    started = time.time()
    try:
        rig.make_storage()
        rig.choose_sets()
        rig.start_sshd()
        for name, _ in NODES:
            rig.mount(name)
        log(f"sshd on 127.0.0.1:{rig.ssh_port}; sshfs mounts with -o {SSHFS_OPTS}")
        rig.node_port = free_port(tuple(addr for _, addr in NODES))
        supported = rig.check_caches_support()
        results["setup"] = {"caches_supported": supported, "sshfs_options": SSHFS_OPTS, "tiles": len(rig.tiles),
                            "changing_tiles": len(rig.changing), "poll_interval_ms": a.poll_ms, "bound_s": a.bound,
                            "node_port": rig.node_port}
        if not supported:
            raise RigError(f"this tessera refuses [[caches]]: {' '.join(rig.caches_refusal)}")
        current = None  # the nodes' config: "plain" or a Varnish URL

        def nodes(invalidate_to):
            nonlocal current
            want = invalidate_to or "plain"
            if current == want and all(n in rig.procs for n, _ in NODES):
                return
            rig.stop_nodes()
            rig.start_nodes(invalidate_to)
            current = want
            log(f"nodes up on 127.0.0.2:{rig.node_port} and 127.0.0.3:{rig.node_port}"
                + (f", invalidating {invalidate_to}" if invalidate_to else ""))

        for mode in modes:
            if mode == "direct":
                nodes(None)
                results["modes"].append(rig.measure(mode, "127.0.0.2", rig.node_port, a.seconds))
            elif mode == "varnish-ttl":
                nodes(None)
                port = rig.start_varnish()
                results["modes"].append(rig.measure(mode, "127.0.0.1", port, a.seconds))
                results["checks"]["varnish"] = [(w, ok, d) for w, ok, d in rig.checks("varnish", "127.0.0.1", port)]
                rig.stop("varnish")
            elif mode in ("nginx", "nginx-stale"):
                nodes(None)
                port = rig.start_nginx(use_stale_updating=(mode == "nginx-stale"))
                results["modes"].append(rig.measure(mode, "127.0.0.1", port, a.seconds))
                if mode == "nginx":
                    results["checks"]["nginx"] = [(w, ok, d) for w, ok, d in rig.checks("nginx", "127.0.0.1", port)]
                rig.stop("nginx")
            elif mode in ("varnish-invalidate", "node-kill"):
                # Varnish first (its port goes into the nodes' [[caches]]), then the nodes.
                vport = free_port()
                inv = f"http://127.0.0.1:{vport}" if supported else None
                nodes(inv)
                port = rig.start_varnish(vport)
                if mode == "varnish-invalidate":
                    results["modes"].append(rig.measure(mode, "127.0.0.1", port, a.seconds))
                else:
                    r = rig.kill_phase("127.0.0.1", port, a.kill_seconds, inv)
                    r["invalidation"] = bool(inv)
                    results["modes"].append(r)
                rig.stop("varnish")
            else:
                raise RigError(f"unknown mode {mode}")
    except RigError as e:
        log(f"ERROR: {e}")
        results["error"] = str(e)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rig.cleanup()
        sys.exit(130)
    finally:
        rig.cleanup()
    results["elapsed_s"] = round(time.time() - started, 1)
    results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(a.results, "w") as f:
        json.dump(results, f, indent=1)
    ok = "error" not in results and any(m.get("requests") for m in results["modes"])
    print(summary(results, a))
    if a.doc and ok:
        write_doc(a.doc, table(results, a))
    sys.exit(0 if ok else 1)


def summary(results, a):
    lines = []
    for m in results["modes"]:
        if m.get("skipped"):
            lines.append(f"fleet {m['mode']}: skipped ({m['skipped']})")
            continue
        hr = "n/a" if m.get("steady_hit_ratio") is None else f"{100 * m['steady_hit_ratio']:.1f} %"
        line = (f"fleet {m['mode']}: {m['requests']} requests, {m['errors']} errors, "
                f"stale > {m['bound_s']:g} s: {m['stale_over_bound']}, stale > 0: {m['stale_over_0']} "
                f"(p50 {m['stale_p50_s']} s, max {m['stale_max_s']} s), hits on unchanged tiles {hr}")
        if m["mode"] == "node-kill":
            ms = m.get("miss_stream", {})
            line += (f"; miss stream errors before/outage/after: "
                     f"{'/'.join(str(ms.get(p, {}).get('errors', 0)) for p in ('before', 'outage', 'after'))}"
                     f"; fetches after restart {m.get('fetches_after_restart')}; both backends served: {m.get('both_backends_after_restart')}")
        lines.append(line)
    passed = failed = 0
    for kind, cs in results.get("checks", {}).items():
        for w, ok, d in cs:
            passed += ok
            failed += not ok
    lines.append(f"fleet checks: {passed} passed, {failed} failed")
    if "error" in results:
        lines.append(f"fleet: rig failed: {results['error']}")
    lines.append(f"fleet: done in {results['elapsed_s']} s; invalidation {'measured' if results['setup'].get('caches_supported') else 'not available in this tessera'}")
    return "\n".join(lines)


DESCR = {
    "direct": "one node, no cache",
    "varnish-invalidate": "Varnish, nodes send BAN",
    "varnish-ttl": "Varnish, TTL from Cache-Control (max-age=60)",
    "nginx": "nginx proxy_cache, 1 s + 304 revalidation",
    "nginx-stale": "the same + use_stale updating, background update",
    "node-kill": "Varnish, node_a SIGKILLed and restarted",
}


def table(results, a):
    s = results["setup"]
    when = results.get("finished_utc") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [f"""## Fleet behind a cache

{when}, `{a.command}`: two tessera nodes (127.0.0.2, 127.0.0.3) serving one tiles root over sshfs
(`-o {s['sshfs_options']}`) from a local sshd, `watch = "poll"`, `poll_interval_ms = {s['poll_interval_ms']}`,
`cache_control = "public, max-age=60"`; a writer replaces {s['changing_tiles']} of the {s['tiles']} tiles by rename
on the storage side, {a.write_rate:g} a second (a tile at most once per {a.min_gap:g} s); {a.clients} clients,
{a.rate:g} requests/s in all, {100 * a.changing_share:.0f} % for the changing tiles, the rest Zipf-skewed over the
unchanged ones, after a warm-up pass over every tile (not counted). {a.seconds:g} s per row ({a.kill_seconds:g} s for the node kill).
A response is stale when a newer version of its tile had been written before the request started;
the bound is {s['bound_s']:g} s: the poll interval, the walk of the root over sshfs, the BAN's trip to Varnish, and
sshfs's attribute caches (0 s with these options). Configurations: `image/fleet/tessera.vcl`,
`image/fleet/nginx-proxy-cache.conf`. sshfs (SFTP v3) carries modification times in whole seconds,
so a replacement of the same size within the same second keeps the file's ETag (a conditional
request with the old one gets 304 over the new body) under the default `etag = "validators"`: the
writer never replaces a tile twice within {a.min_gap:g} s. A revalidating cache in front of such storage
could otherwise keep a stale tile until its next change; `etag = "content"` (checked by hand: the same
replacement then changes the ETag and the old one gets 200) avoids it.

| mode | requests | errors | stale > {s['bound_s']:g} s | stale > 0 | p50 / max staleness of those (s) | hits, unchanged tiles |
|---|---|---|---|---|---|---|"""]
    for m in results["modes"]:
        if m.get("skipped"):
            out.append(f"| {m['mode']}: {DESCR.get(m['mode'], '')} | skipped: {m['skipped']} | | | | | |")
            continue
        hr = "n/a" if m.get("steady_hit_ratio") is None else f"{100 * m['steady_hit_ratio']:.1f} %"
        out.append(f"| {m['mode']}: {DESCR.get(m['mode'], '')} | {m['requests']:,} | {m['errors']} | {m['stale_over_bound']:,} | "
                   f"{m['stale_over_0']:,} of {m['changing_requests']:,} | {m['stale_p50_s']:.2f} / {m['stale_max_s']:.2f} | {hr} |")
    for m in results["modes"]:
        if m["mode"] == "node-kill" and not m.get("skipped"):
            ms = m.get("miss_stream", {})
            parts = []
            for p in ("before", "outage", "after"):
                x = ms.get(p, {"requests": 0, "errors": 0, "backends": {}})
                bes = ", ".join(f"{k} {v}" for k, v in sorted(x["backends"].items()))
                parts.append(f"{p}, {x['requests']} fetches, {x['errors']} errors ({bes or 'none served'})")
            out.append(f"""
Node kill ({'with' if m.get('invalidation') else 'without'} invalidation): node_a was SIGKILLed at 30 % of the run
and started again 3 s later (ready {m.get('restart_to_ready_s')} s after its start). Beside the clients, one request
every 50 ms for a URL Varnish had never seen (a fetch each): {'; '.join(parts)}. Varnish's fetches per backend after the
restart (VBE counters): {', '.join(f"{k} {v}" for k, v in sorted(m.get('fetches_after_restart', {}).items()))}; both backends served: {'yes' if m.get('both_backends_after_restart') else 'no'}.
Client errors over the whole run: {m['errors']}.""")
    checks = results.get("checks", {})
    n = sum(len(v) for v in checks.values())
    ok = sum(1 for v in checks.values() for c in v if c[1])
    if n:
        out.append(f"\nFunctional checks of the two configurations: {ok} of {n} passed"
                   + ("" if ok == n else ": failed " + "; ".join(c[0] for v in checks.values() for c in v if not c[1])) + ".")
    return "\n".join(out) + "\n"


def write_doc(path, text):
    doc = open(path).read()
    begin, end = "<!-- fleet:begin -->", "<!-- fleet:end -->"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + text + doc[doc.index(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{text}{end}\n"
    with open(path, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
