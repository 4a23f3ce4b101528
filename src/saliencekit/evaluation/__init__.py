"""Dataset evaluation: methods x metrics over images, in blocks, reproducible and resumable.

``run`` (the evaluation core: ``evaluate_images`` on a list of images, ``summarize``),
``variants`` (evaluation names from the method registry), ``store`` (the resumable block store
and the local backend), ``ray`` (the same blocks on a Ray cluster; Ray is imported only when
used), ``report`` (the CSV tables, summary.md with 95% intervals, the plots), ``sanity`` (the
model-parameter randomisation test, which re-explains with randomised copies of the model).
"""

from . import report, run, store, variants
from .run import EvalResult, evaluate_images, image_id, summarize
from .sanity import sanity_check
from .store import BlockStore, evaluate_local
from .variants import RANDOM, available

__all__ = ["BlockStore", "EvalResult", "RANDOM", "available", "evaluate_images", "evaluate_local", "image_id", "report",
           "run", "sanity_check", "store", "summarize", "variants"]
