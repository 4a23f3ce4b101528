"""Regenerate docs/img/cams.png: Grad-CAM, Grad-CAM++ and Smooth Grad-CAM++ on the bundled samples.

    .venv/bin/python docs/cams_figure.py
"""

from pathlib import Path

import saliencekit as sk
from saliencekit import visualize

OUT = Path(__file__).resolve().parent / "img" / "cams.png"

model = sk.load_model("efficientnet-lite0")
samples = sk.sample_images()
x = sk.load_images([a for _, a in samples], preprocessing=sk.get_preprocessing(model))
maps, titles = {}, None
for method in ("gradcam", "gradcampp", "smoothgradcampp"):
    e = sk.explain(model, x, method, seed=0)  # automatic layer (_swish, 7x7), predicted class
    maps[method] = list(e.heatmap().numpy())
    titles = [f"{n}: {c}" for (n, _), c in zip(samples, e.target_names())]
    print(method, e.extras["layer"], f"{e.time_s:.1f} s")
fig = visualize.grid(list(e.pixels()), maps, row_titles=titles)
OUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT, dpi=80)
print("wrote", OUT)
