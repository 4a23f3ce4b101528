"""The three paper claims of docs/evaluation.md, tested on a `saliencekit evaluate` results.csv.

    python benchmarks/evaluation_claims.py OUT/results.csv [--st OUT_ST/results.csv]

Each claim is a paired comparison over the same images: the mean difference with a 95% Student-t
interval, how many images favour each side (ties left out) with a two-sided sign test, and the
medians. Verdict from the mean difference's interval; a sign test that disagrees is noted. Prints markdown.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np
from scipy import stats

from saliencekit.evaluation.report import read_results

CLAIMS = [
    # (claim, metric, method that should be lower, reference method(s), source)
    ("SmoothTaylor less noisy than IG (lower AUTVC)", "autvc", "smoothtaylor", ["ig_black", "ig_blur"],
     "Goh et al. 2021"),
    ("positive map: lower allegiance AUC than the gradient", "allegiance", "positive", ["original", "gradient"],
     "Llorente et al. 2023"),
    ("active map: lower allegiance AUC than the gradient", "allegiance", "active", ["original", "gradient"],
     "Llorente et al. 2023"),
    ("Grad-CAM++ lower average drop than Grad-CAM", "average_drop", "gradcampp", ["gradcam"],
     "Chattopadhyay et al. 2018"),
    ("adaptive SmoothTaylor less noisy than fixed sigma (lower AUTVC)", "autvc", "smoothtaylor_adaptive",
     ["smoothtaylor"], "Goh et al. 2021"),
]


def load(paths):
    """(method, metric) -> {image: value}; a damaged results.csv stops the script with its file and line."""
    vals = defaultdict(dict)
    for p in paths:
        try:
            rows = read_results(p)
        except ValueError as e:
            raise SystemExit(f"evaluation_claims: {e}") from None
        for r in rows:
            vals[(r["method"], r["metric"])][r["image"]] = r["value"]
    return vals


def paired(a: dict, b: dict):
    imgs = sorted(set(a) & set(b))
    d = [a[i] - b[i] for i in imgs]
    n = len(d)
    if n < 2:
        return None
    m = sum(d) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    lower = sum(v < 0 for v in d)
    higher = sum(v > 0 for v in d)
    return n, sum(a[i] for i in imgs) / n, sum(b[i] for i in imgs) / n, m, m - h, m + h, lower, higher, \
        float(np.median([a[i] for i in imgs])), float(np.median([b[i] for i in imgs]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    args = ap.parse_args()
    vals = load(args.results)
    print("| claim (paper) | metric | method vs reference | images | means | medians | paired difference of means "
          "[95% CI] | images lower / higher (sign test p) | verdict |")
    print("|---|---|---|---:|---|---|---|---|---|")
    for claim, metric, m, refs, src in CLAIMS:
        for ref in refs:
            a, b = vals.get((m, metric)), vals.get((ref, metric))
            if not a or not b:
                continue
            r = paired(a, b)
            if r is None:
                continue
            n, ma, mb, d, lo, hi, low, high, meda, medb = r
            p = stats.binomtest(low, low + high).pvalue if low + high else float("nan")
            if hi < 0:
                verdict = "**holds**"
            elif lo > 0:
                verdict = "**reversed**"
            else:
                verdict = "not significant"
            if verdict != "**holds**" and p < 0.05 and low > high:
                verdict += " on the mean; holds by the sign test"
            elif verdict != "**reversed**" and p < 0.05 and high > low:
                verdict += " on the mean; reversed by the sign test"
            print(f"| {claim} ({src}) | {metric} | {m} vs {ref} | {n} | {ma:.4g} vs {mb:.4g} | {meda:.4g} vs {medb:.4g} | "
                  f"{d:+.4g} [{lo:+.4g}, {hi:+.4g}] | {low} / {high} (p = {p:.2g}) | {verdict} |")


if __name__ == "__main__":
    main()
