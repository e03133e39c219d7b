#!/usr/bin/env python3
"""Sums over every process of one process group (a server started by setsid):
  procstat.py cpu PGID   utime+stime in seconds (/proc/PID/stat fields 14, 15)
  procstat.py rss PGID   VmRSS in kB (/proc/PID/status)
  procstat.py pids PGID  the pids
"""
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def members(pgid):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15
        if int(fields[2]) == pgid:
            yield int(pid), int(fields[11]) + int(fields[12])


def main():
    what, pgid = sys.argv[1], int(sys.argv[2])
    procs = list(members(pgid))
    if what == "cpu":
        print(f"{sum(t for _, t in procs) / TICK:.2f}")
    elif what == "rss":
        kb = 0
        for pid, _ in procs:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            kb += int(line.split()[1])
            except OSError:
                pass
        print(kb)
    elif what == "pids":
        print(" ".join(str(p) for p, _ in procs))


if __name__ == "__main__":
    main()
