"""Time explain in this process with whichever saliencekit is first on the path (one JSON line).

Run it alternately with two checkouts to compare versions on the same machine:

    PYTHONPATH=/path/to/old/src .venv/bin/python benchmarks/bench_before_after.py
    .venv/bin/python benchmarks/bench_before_after.py

SmoothGrad-50 and IG-50 on EfficientNet-Lite0 and the 2 bundled photos, 4 calls each (the first
includes the layout probe).
"""

import json
import time

import torch

import saliencekit as sk
from saliencekit import data

model = sk.load_model("efficientnet-lite0")
spec = sk.get_preprocessing(model)
x = data.load_images([a for _, a in data.sample_images()], preprocessing=spec)
with torch.no_grad():
    t = model(x).argmax(1)
out = {}
for method, o in (("smoothgrad", {"n_samples": 50}), ("integrated_gradients", {"n_steps": 50})):
    ts = []
    for _ in range(4):
        t0 = time.perf_counter()
        sk.explain(model, x, method, target=t, keep_inputs=False, **o)
        ts.append(time.perf_counter() - t0)
    out[method] = ts
print(json.dumps({"file": sk.__file__, "times": out}))
