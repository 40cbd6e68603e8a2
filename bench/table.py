#!/usr/bin/env python3
"""Summarizes bench CSV rows: median wall time per (dataset, tool), min/max, CPU time, peak RSS,
and the ratio of each tool's median to blit's. Prints a Markdown table."""
import csv
import statistics
import sys
from collections import defaultdict


def main(path):
    rows = defaultdict(list)
    for r in csv.DictReader(open(path)):
        rows[(r["dataset"], r["tool"])].append(r)
    datasets = []
    for ds, _ in rows:
        if ds not in datasets:
            datasets.append(ds)
    print("| dataset | tool | median s | min–max s | CPU s (user+sys) | peak RSS MiB | time vs blit |")
    print("|---|---|---|---|---|---|---|")
    for ds in datasets:
        # The reference row is blit's (named "blit" or "blit <transport>").
        blit = next((rs for (d, t), rs in rows.items() if d == ds and t.split()[0] == "blit"), None)
        blit_med = statistics.median(float(r["wall_s"]) for r in blit) if blit else None
        for (d, tool), rs in rows.items():
            if d != ds:
                continue
            walls = [float(r["wall_s"]) for r in rs]
            cpu = statistics.median(float(r["user_s"]) + float(r["sys_s"]) for r in rs)
            rss = max(int(r["maxrss_kb"]) for r in rs) / 1024
            med = statistics.median(walls)
            ratio = f"{med / blit_med:.2f}×" if blit_med else "–"
            print(f"| {ds} | {tool} | {med:.2f} | {min(walls):.2f}–{max(walls):.2f} | {cpu:.2f} | {rss:.0f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
