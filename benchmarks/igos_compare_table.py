"""Markdown tables from ``igos_eval.py compare --save`` files (per-image AUCs): means per method and
protocol, the 32-photo goal for I-GOS 28, and on how many photos each method deletes fastest.

    python benchmarks/igos_compare_table.py compare50_rise.jsonl compare50_igos.jsonl [--goal-n 32]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--goal-n", type=int, default=32)
    args = ap.parse_args()
    per = defaultdict(dict)  # protocol -> method -> {"deletion": [...], "insertion": [...]}
    order = []
    for f in args.files:
        for line in open(f):
            row = json.loads(line)
            m = row["method"]
            if m not in order:
                order.append(m)
            for proto, v in row.items():
                if isinstance(v, dict) and "deletion_per_image" in v:
                    per[proto][m] = {"deletion": v["deletion_per_image"], "insertion": v["insertion_per_image"]}
    protos = [p for p in ("rise", "igos") if p in per]
    head = "| method | photos | " + " | ".join(f"{p.upper()} deletion ↓ | {p.upper()} insertion ↑" for p in protos) + " |"
    print(head)
    print("|---|---:|" + "---:|---:|" * len(protos))
    for m in order:
        cells, n = [], None
        for p in protos:
            d = per[p].get(m)
            if d is None:
                cells += ["–", "–"]
                continue
            n = len(d["deletion"])
            cells += [f"{sum(d['deletion']) / n:.4f}", f"{sum(d['insertion']) / n:.4f}"]
        print(f"| {m} | {n} | " + " | ".join(cells) + " |")
    print()
    for p in protos:
        ms = [m for m in order if m in per[p]]
        n = min(len(per[p][m]["deletion"]) for m in ms)
        wins = defaultdict(int)
        for i in range(n):
            best = min(ms, key=lambda m: per[p][m]["deletion"][i])
            wins[best] += 1
        print(f"{p.upper()}: lowest deletion AUC per photo (of {n}): "
              + ", ".join(f"{m} {wins[m]}" for m in ms))
    if "rise" in per and "igos28" in per["rise"]:
        d = per["rise"]["igos28"]
        k = min(args.goal_n, len(d["deletion"]))
        print(f"\nI-GOS 28, RISE, first {k} photos: deletion {sum(d['deletion'][:k]) / k:.4f}, "
              f"insertion {sum(d['insertion'][:k]) / k:.4f}")


if __name__ == "__main__":
    main()
