#!/usr/bin/env python3
"""Turns the raw CSV of benches/compare into the Markdown report.

  report.py CSV META_JSON MARKDOWN_FILE

The report goes between the markers <!-- compare:begin --> and
<!-- compare:end --> of MARKDOWN_FILE (the rest of the file, such as
profiling notes, is kept); a file without markers gets them appended.
The report is also printed to stdout.
"""
import csv
import json
import os
import statistics
import sys
from collections import defaultdict

PLAIN = ["nginx", "lighttpd", "apache", "tessera-sendfile", "tessera-buffered"]
TLS = ["nginx-tls", "lighttpd-tls", "tessera-tls"]
ORDER = PLAIN + TLS
LABEL = {
    "nginx": "nginx",
    "lighttpd": "lighttpd",
    "apache": "Apache httpd",
    "tessera-sendfile": "tessera `--delivery sendfile`",
    "tessera-buffered": "tessera `--delivery buffered`",
    "nginx-tls": "nginx TLS",
    "lighttpd-tls": "lighttpd TLS",
    "tessera-tls": "tessera TLS",
}
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def load(path):
    """server -> metric -> [values by round]: numbers in the first mapping, words
    (such as the negotiated TLS suite) in the second."""
    data = defaultdict(lambda: defaultdict(list))
    words = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for row in csv.DictReader(f):
            try:
                data[row["server"]][row["metric"]].append(float(row["value"]))
            except ValueError:
                words[row["server"]][row["metric"]].append(row["value"])
    return data, words


def suite(words, server):
    """What the server negotiated, the same in every round, or each round's."""
    w = words.get(server, {})
    parts = []
    for k in ("tls_protocol", "tls_cipher"):
        vals = sorted(set(w.get(k, [])))
        parts.append(" / ".join(vals) if vals else "?")
    groups = sorted(set(w.get("tls_group", [])))
    return f"{parts[0]} {parts[1]}" + (f" ({', '.join(groups)})" if groups else "")


def median(data, server, metric):
    """The median over the rounds (the mean of two), the figure every table shows."""
    vals = data.get(server, {}).get(metric)
    return statistics.median(vals) if vals else None


def spread(data, server, metric, digits=0):
    """The rounds' lowest and highest value, as "lo–hi"."""
    vals = data.get(server, {}).get(metric)
    if not vals:
        return "–"
    return f"{num(min(vals), digits)}–{num(max(vals), digits)}"


def round_ratios(data, a, b, metric):
    """a's value over b's, round by round (rounds are run in turns, so round i of each belongs together)."""
    va, vb = data.get(a, {}).get(metric, []), data.get(b, {}).get(metric, [])
    return [x / y for x, y in zip(va, vb) if y]


def num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(v, ref):
    if v is None or ref is None or ref == 0:
        return ""
    return f" ({v / ref:.2f}×)"


def render(data, words, meta):
    servers = [s for s in ORDER if s in data]
    plain = [s for s in PLAIN if s in data]
    tls = [s for s in TLS if s in data]
    ng = lambda m: median(data, "nginx", m)  # noqa: E731
    out = []
    w = out.append
    w("## Latest run of `benches/compare`")
    w("")
    w(f"- Date: {meta['date']}")
    w(f"- Machine: {meta['machine']}")
    w(f"- Versions: {meta['versions']}")
    w(f"- Command: `{meta['command']}`")
    w(f"- Durations: {meta['durations']}")
    w(f"- Limits: {meta['limits']}")
    w(f"- Raw values (every round): `{meta['csv']}`; each server's config and logs: `{meta['csv'][:-4]}.d/`")
    w("- Configurations:")
    for c in meta.get("configs", []):
        w(f"  - {c}")
    w("")
    w("| server | tiles req/s | tiles p99 ms | server CPU µs per tile | log MB/s, curl | log MB/s, wrk | server CPU s/GB, curl | server CPU s/GB, wrk | client CPU s/GB, curl / wrk | stale >50 ms / responses | worst stale ms | RSS MiB |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in plain:
        rps, p99 = median(data, s, "tiles_rps"), median(data, s, "tiles_p99_ms")
        tcpu = median(data, s, "tiles_cpu_us")
        mbps, cpu = median(data, s, "log_mbps"), median(data, s, "log_cpu_s_per_gb")
        wmbps, wcpu = median(data, s, "log_wrk_mbps"), median(data, s, "log_wrk_cpu_s_per_gb")
        stale, total = median(data, s, "fresh_stale50"), median(data, s, "fresh_total")
        worst = max(data[s].get("fresh_worst_ms", [None]) or [None], key=lambda x: -1 if x is None else x)
        rss = median(data, s, "rss_mib")
        stale_cell = "–" if stale is None else f"{num(stale)} / {num(total)}{ratio(stale, ng('fresh_stale50'))}"
        w(
            f"| {LABEL[s]} | {num(rps)}{ratio(rps, ng('tiles_rps'))} | {num(p99, 2)}{ratio(p99, ng('tiles_p99_ms'))}"
            f" | {num(tcpu, 2)}{ratio(tcpu, ng('tiles_cpu_us'))}"
            f" | {num(mbps)}{ratio(mbps, ng('log_mbps'))} | {num(wmbps)}{ratio(wmbps, ng('log_wrk_mbps'))}"
            f" | {num(cpu, 3)}{ratio(cpu, ng('log_cpu_s_per_gb'))} | {num(wcpu, 3)}{ratio(wcpu, ng('log_wrk_cpu_s_per_gb'))}"
            f" | {num(median(data, s, 'log_client_cpu_s_per_gb'), 3)} / {num(median(data, s, 'log_wrk_client_cpu_s_per_gb'), 3)}"
            f" | {stale_cell} | {num(worst, 1)}{ratio(worst, max(data.get('nginx', {}).get('fresh_worst_ms', [0])))}"
            f" | {num(rss)}{ratio(rss, ng('rss_mib'))} |"
        )
    lo = median(data, "iperf3", "loopback_mbps")
    w(f"| loopback limit (iperf3, one stream) | – | – | – | {num(lo)}{ratio(lo, ng('log_mbps'))} | {num(lo)}{ratio(lo, ng('log_wrk_mbps'))} | – | – | – | – | – | – |")
    w("")
    w(
        "Each figure is the median of the rounds (servers measured in turns, A B … A B …; with two rounds, their"
        " mean); `(x×)` is the ratio to nginx in the same run. MB = 10^6 bytes, GB = 10^9 bytes. Tiles: wrk, 1"
        " thread, 64 keep-alive connections, uniformly random URLs over the pyramid, after a sequential warm-up pass;"
        " server CPU per tile = utime+stime of all the server's processes (its process group) over the wrk run,"
        " divided by the responses. Log: one connection; curl downloads the whole log, then wrk asks for it again"
        " and again; server CPU = utime+stime of all the server's processes around the downloads, client CPU = the"
        " client's own (bash `time`). On loopback the receive processing runs partly in the sender's context and"
        " partly in the receiver's, so the two CPU columns move against each other: read their sum."
        " Stale: responses carrying a version superseded (by atomic rename) more than 50 ms before the request was"
        " sent; worst stale = the largest such age (any age, max over rounds). RSS: VmRSS of all the server's"
        " processes after the tiles run."
    )
    if tls:
        nt = lambda m: median(data, "nginx-tls", m)  # noqa: E731
        w("")
        w("TLS, the same servers over HTTPS (ratios to nginx TLS in the same run):")
        w("")
        w("| server | negotiated (openssl s_client) | tiles req/s | tiles p99 ms | log MB/s | server CPU s/GB | RSS MiB |")
        w("|---|---|---|---|---|---|---|")
        for s in tls:
            rps, p99 = median(data, s, "tiles_rps"), median(data, s, "tiles_p99_ms")
            mbps, cpu = median(data, s, "log_mbps"), median(data, s, "log_cpu_s_per_gb")
            rss = median(data, s, "rss_mib")
            w(
                f"| {LABEL[s]} | {suite(words, s)} | {num(rps)}{ratio(rps, nt('tiles_rps'))} | {num(p99, 2)}{ratio(p99, nt('tiles_p99_ms'))}"
                f" | {num(mbps)}{ratio(mbps, nt('log_mbps'))} | {num(cpu, 3)}{ratio(cpu, nt('log_cpu_s_per_gb'))}"
                f" | {num(rss)}{ratio(rss, nt('rss_mib'))} |"
            )
        w("")
        w(
            "TLS 1.3 with the one suite above for every server, one self-signed ECDSA P-256 certificate; wrk and curl"
            " (`--http1.1`) over OpenSSL, as for the plaintext rows, with the same tiles and log measurements; no"
            " freshness probe. The suite is what `openssl s_client` negotiated right after the server started (curl's"
            " handshake is checked against it, and the run stops if two TLS servers differ)."
        )
    errs = []
    for s in servers:
        for m, what in [("log_wrk_errors", "wrk log downloads with errors"), ("tiles_non2xx", "tiles answered with a status other than 2xx/3xx (not counted in req/s)"),
                        ("tiles_sockerr", "wrk socket errors or timeouts"), ("tiles_warm_short", "warm-up did not cover every tile"),
                        ("fresh_errors", "prober connection errors"), ("fresh_non200", "prober non-200 answers"),
                        ("fresh_corrupt", "prober bodies not matching their version"), ("log_short", "log downloads short or not 200")]:
            v = data[s].get(m)
            if v and sum(v) > 0:
                errs.append(f"{LABEL[s]}: {what}: {num(sum(v))}")
    if errs:
        w("")
        w("**Errors seen in this run** (tiles req/s counts successful answers only):")
        w("")
        for e in errs:
            w(f"- {e}")
    w("")
    w("### Goals (issue 21: efficiency)")
    w("")
    w(efficiency_goals(data))
    w("")
    w("### Goals (issue 4)")
    w("")
    w(goals(data))
    w("")
    if tls:
        w("### Goals (TLS)")
        w("")
        w(tls_goals(data))
        w("")
    w("Per-round values:")
    w("")
    metrics = ["tiles_rps", "tiles_p99_ms", "tiles_cpu_us", "log_mbps", "log_wrk_mbps", "log_cpu_s_per_gb", "log_wrk_cpu_s_per_gb",
               "log_client_cpu_s_per_gb", "log_wrk_client_cpu_s_per_gb", "fresh_stale50", "fresh_total", "fresh_worst_ms", "rss_mib"]
    w("| server | " + " | ".join(metrics) + " |")
    w("|---|" + "---|" * len(metrics))
    for s in servers:
        cells = []
        for m in metrics:
            vals = data[s].get(m, [])
            digits = 2 if m in ("tiles_p99_ms", "tiles_cpu_us") or m.endswith("_s_per_gb") else 0
            cells.append(" / ".join(num(v, digits) for v in vals) or "–")
        w(f"| {s} | " + " | ".join(cells) + " |")
    if "iperf3" in data:
        w(f"| iperf3 loopback_mbps | {' / '.join(num(v) for v in data['iperf3']['loopback_mbps'])} |" + " |" * (len(metrics) - 1))
    return "\n".join(out) + "\n"


def goals(data):
    lines = []
    t = "tessera-sendfile"

    def mark(ok):
        return "met" if ok else "**NOT met**"

    def have(*pairs):
        return all(median(data, s, m) is not None for s, m in pairs)

    if have((t, "tiles_rps"), ("nginx", "tiles_rps")):
        r = median(data, t, "tiles_rps") / median(data, "nginx", "tiles_rps")
        p, pn = median(data, t, "tiles_p99_ms"), median(data, "nginx", "tiles_p99_ms")
        lines.append(f"- [{'x' if r >= 1.3 else ' '}] Tiles req/s >= 1.3× nginx: {mark(r >= 1.3)} ({r:.2f}×, {num(median(data, t, 'tiles_rps'))} vs {num(median(data, 'nginx', 'tiles_rps'))})")
        lines.append(f"- [{'x' if p <= pn else ' '}] Tiles p99 <= nginx's: {mark(p <= pn)} ({p:.2f} ms vs {pn:.2f} ms)")
    else:
        lines.append("- [ ] Tiles: not measured in this run (needs nginx and tessera-sendfile)")
    if have((t, "log_mbps"), ("nginx", "log_mbps")):
        r = median(data, t, "log_mbps") / median(data, "nginx", "log_mbps")
        lines.append(f"- [{'x' if r >= 1.2 else ' '}] Log MB/s >= 1.2× nginx: {mark(r >= 1.2)} ({r:.2f}×, {num(median(data, t, 'log_mbps'))} vs {num(median(data, 'nginx', 'log_mbps'))} MB/s)")
    else:
        lines.append("- [ ] Log MB/s: not measured in this run (needs nginx and tessera-sendfile)")
    if have((t, "log_cpu_s_per_gb"), ("lighttpd", "log_cpu_s_per_gb")):
        c, cl = median(data, t, "log_cpu_s_per_gb"), median(data, "lighttpd", "log_cpu_s_per_gb")
        lines.append(f"- [{'x' if c <= cl else ' '}] Log CPU/GB <= lighttpd's: {mark(c <= cl)} ({c:.3f} vs {cl:.3f} s/GB)")
    else:
        lines.append("- [ ] Log CPU/GB: not measured in this run (needs lighttpd and tessera-sendfile)")
    for s in ("tessera-sendfile", "tessera-buffered"):
        vals = data.get(s, {}).get("fresh_stale50")
        if vals is not None:
            n = sum(vals)
            lines.append(f"- [{'x' if n == 0 else ' '}] Zero stale >50 ms, {s}: {mark(n == 0)} ({num(n)} of {num(sum(data[s]['fresh_total']))} responses over all rounds, worst {num(max(data[s]['fresh_worst_ms']), 1)} ms)")
    for s in ("tessera-sendfile", "tessera-buffered"):
        vals = data.get(s, {}).get("rss_mib")
        if vals:
            budget = data[s]["budget_mib"][0]
            limit = budget + 64
            worst = max(vals)
            lines.append(f"- [{'x' if worst <= limit else ' '}] RSS <= cache budget + 64 MiB, {s}: {mark(worst <= limit)} ({worst:.0f} MiB, limit {budget:.0f} + 64 = {limit:.0f} MiB)")
    return "\n".join(lines)


def efficiency_goals(data):
    """Issue 21's goals: medians over the rounds, with the spread of the round-by-round ratios."""
    t = "tessera-sendfile"
    lines = []

    def line(ok, text):
        lines.append(f"- [{'x' if ok else ' '}] {text}: {'met' if ok else '**NOT met**'}")

    def rr(a, b, metric):
        r = round_ratios(data, a, b, metric)
        return f"rounds {min(r):.2f}–{max(r):.2f}×" if r else "no rounds"

    if median(data, t, "tiles_cpu_us") is not None and median(data, "nginx", "tiles_cpu_us") is not None:
        c, cn = median(data, t, "tiles_cpu_us"), median(data, "nginx", "tiles_cpu_us")
        line(c <= 0.75 * cn, f"Server CPU per tile <= 0.75× nginx's ({c / cn:.2f}×: {c:.2f} µs, spread"
             f" {spread(data, t, 'tiles_cpu_us', 2)}, against {cn:.2f} µs, {spread(data, 'nginx', 'tiles_cpu_us', 2)};"
             f" {rr(t, 'nginx', 'tiles_cpu_us')})")
        p, pn = median(data, t, "tiles_p99_ms"), median(data, "nginx", "tiles_p99_ms")
        line(p <= pn, f"Tiles p99 <= nginx's ({p:.2f} ms, {spread(data, t, 'tiles_p99_ms', 2)}, against {pn:.2f} ms,"
             f" {spread(data, 'nginx', 'tiles_p99_ms', 2)})")
    else:
        lines.append("- [ ] Tiles: not measured in this run (needs nginx and tessera-sendfile)")
    vals = data.get(t, {}).get("fresh_stale50")
    if vals is not None:
        line(sum(vals) == 0, f"Zero stale responses ({num(sum(vals))} stale >50 ms of {num(sum(data[t]['fresh_total']))})")
    lo = median(data, "iperf3", "loopback_mbps")
    for client, mb, cpu in (("curl", "log_mbps", "log_cpu_s_per_gb"), ("wrk", "log_wrk_mbps", "log_wrk_cpu_s_per_gb")):
        v = median(data, t, mb)
        if v is None:
            lines.append(f"- [ ] Large file with {client}: not measured in this run")
            continue
        if lo:
            line(v >= 0.9 * lo, f"Large file ({client}) >= 0.9× iperf3's one stream ({v / lo:.2f}×: {num(v)} MB/s,"
                 f" {spread(data, t, mb)}, against {num(lo)}, {spread(data, 'iperf3', 'loopback_mbps')})")
        vl = median(data, "lighttpd", mb)
        if vl is None:
            lines.append(f"- [ ] Large file ({client}) against lighttpd: not measured in this run (needs lighttpd)")
            continue
        line(v >= vl, f"Large file ({client}) >= lighttpd's MB/s ({v / vl:.2f}×: {num(v)} against {num(vl)},"
             f" {spread(data, 'lighttpd', mb)}; {rr(t, 'lighttpd', mb)})")
        c, cl = median(data, t, cpu), median(data, "lighttpd", cpu)
        line(c <= 0.9 * cl, f"Large file ({client}) CPU per GB <= 0.9× lighttpd's ({c / cl:.2f}×: {c:.3f} s/GB,"
             f" {spread(data, t, cpu, 3)}, against {cl:.3f}, {spread(data, 'lighttpd', cpu, 3)}; {rr(t, 'lighttpd', cpu)})")
        own = "log_client_cpu_s_per_gb" if client == "curl" else "log_wrk_client_cpu_s_per_gb"
        k, kl = median(data, t, own), median(data, "lighttpd", own)
        if k is not None and kl is not None:
            lines.append(f"  - with the client's own CPU, server + {client}: tessera {c + k:.3f} s/GB, lighttpd {cl + kl:.3f}"
                         f" ({(c + k) / (cl + kl):.2f}×)")
    return "\n".join(lines)


def tls_goals(data):
    t, n = "tessera-tls", "nginx-tls"
    lines = []
    if median(data, t, "log_mbps") is not None and median(data, n, "log_mbps") is not None:
        v, vn = median(data, t, "log_mbps"), median(data, n, "log_mbps")
        ok = v >= vn
        lines.append(f"- [{'x' if ok else ' '}] TLS log MB/s >= nginx TLS's: {'met' if ok else '**NOT met**'} ({v / vn:.2f}×, {num(v)} vs {num(vn)} MB/s)")
        c, cn = median(data, t, "log_cpu_s_per_gb"), median(data, n, "log_cpu_s_per_gb")
        ok = c <= cn
        lines.append(f"- [{'x' if ok else ' '}] TLS log CPU/GB <= nginx TLS's: {'met' if ok else '**NOT met**'} ({c / cn:.2f}×, {c:.3f} vs {cn:.3f} s/GB)")
    else:
        lines.append("- [ ] TLS log: not measured in this run (needs nginx-tls and tessera-tls)")
    return "\n".join(lines)


def main():
    csv_path, meta_path, md_path = sys.argv[1:4]
    with open(meta_path) as f:
        meta = json.load(f)
    data, words = load(csv_path)
    report = render(data, words, meta)
    block = f"{BEGIN}\n{report}{END}\n"
    old = open(md_path).read() if os.path.exists(md_path) else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :].lstrip("\n")
    else:
        head = old or (
            "# Benchmarks\n\n"
            "`benches/compare` measures tessera against nginx, lighttpd and Apache httpd on this machine, side by side,"
            " and checks issue 4's goals. Run it with `benches/compare` (about 10 minutes; `--quick` for a short"
            " development run, `--only nginx,tessera-sendfile` for a subset, `--rounds N`). The section between the"
            " markers below is rewritten by each run; notes outside it are kept.\n\n"
        )
        new = head.rstrip("\n") + "\n\n" + block
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(new)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
