"""Used by .ci/console: what the console costs the server, measured on the
server process's own CPU time (/proc/PID/stat) over a large appliance
(1,000 devices, 100 tilesets):
  - one /console/data.json (polled every 5 s by an open console) and one
    /console/devices.json (once a minute), each averaged over many requests;
  - one tile request, from a wrk run against the same server;
then one open console's share of the server's CPU at 10,000 tile requests
per second. Prints the figures; judges nothing.

    python3 .ci/console_cost.py BASE PID
"""
import os
import re
import subprocess
import sys
import time
import urllib.request

base, pid = sys.argv[1], int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")


def cpu_s():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def per_request(path, n):
    before = cpu_s()
    size = 0
    for _ in range(n):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            size = len(r.read())
    return (cpu_s() - before) / n, size


data_s, data_bytes = per_request("/console/data.json", 200)
devices_s, devices_bytes = per_request("/console/devices.json", 40)
before = cpu_s()
wrk = subprocess.run(["wrk", "-t1", "-c16", "-d5s", base + "/tiles/layer-001/1/0/0.png"], capture_output=True, text=True)
tile_cpu = cpu_s() - before
requests = int(re.search(r"(\d+) requests in", wrk.stdout).group(1))
tile_s = tile_cpu / requests
console_per_s = data_s / 5 + devices_s / 60
share = console_per_s / (10_000 * tile_s)
print(f"cost data.json {data_s * 1e3:.2f} ms CPU, {data_bytes} bytes; devices.json {devices_s * 1e3:.2f} ms CPU, "
      f"{devices_bytes} bytes; tile {tile_s * 1e6:.1f} us CPU ({requests} requests by wrk)")
print(f"cost one open console: {console_per_s * 1e3:.2f} ms of CPU a second = {share * 100:.2f} % of the server's CPU "
      f"at 10,000 tile requests a second")
