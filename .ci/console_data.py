"""Data for .ci/console: the repository's sample tiles and logs plus a
device whose logs have a missing day (`small/`), and a large appliance of
1,000 devices and 100 tilesets (`large/`) for the page-load and CPU figures.

    python3 .ci/console_data.py OUTDIR
"""
import json
import os
import shutil
import sys
import time

out = sys.argv[1]
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = 86400


def day_log(path, day0, every, device):
    """A JSON-lines log of one day up to now, a line every `every` seconds."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for t in range(day0, min(day0 + DAY, int(time.time())), every):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
            f.write(json.dumps({"ts": stamp, "device_id": device, "flow_l_s": (t // every) % 97}) + "\n")


def tile(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)


today = int(time.time()) // DAY * DAY
small = os.path.join(out, "small")
shutil.copytree(os.path.join(repo, "tiles"), os.path.join(small, "tiles"))
shutil.copytree(os.path.join(repo, "logs"), os.path.join(small, "logs"))
# A pump station that went quiet for a day: logs for three days of four.
for back in (3, 2, 0):
    day0 = today - back * DAY
    name = time.strftime("%Y-%m-%d", time.gmtime(day0)) + ".jsonl"
    day_log(os.path.join(small, "logs", "pump-station-gap", name), day0, 600, "pump-station-gap")

# A device and a tileset named like markup (names come from the disk).
hostile = "<img src=x onerror=window.pwned=1>\"'&"
day_log(os.path.join(small, "logs", hostile, "today.jsonl"), today, 3600, "hostile")
tile(os.path.join(small, "tiles", hostile, "0", "0", "0.png"), b"\x89PNG\r\n\x1a\n" + b"\0" * 64)

large = os.path.join(out, "large")
png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
for i in range(100):
    for z, x, y in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 0, 1), (2, 1, 1)]:
        tile(os.path.join(large, "tiles", "layer-%03d" % i, str(z), str(x), "%d.png" % y), png)
for i in range(1000):
    device = "meter-%04d" % i
    for back in (2, 1) if i % 9 else (3, 1):
        day0 = today - back * DAY
        name = time.strftime("%Y-%m-%d", time.gmtime(day0)) + ".jsonl"
        day_log(os.path.join(large, "logs", device, name), day0, 3600, device)
print("console data in", out)
