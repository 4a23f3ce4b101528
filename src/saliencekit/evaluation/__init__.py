"""Dataset evaluation: methods x metrics over images, in blocks, reproducible and resumable.

``run`` (the evaluation of one list of images), ``variants`` (evaluation names from the method
registry), ``ray`` (the same blocks on a Ray cluster), ``sanity`` (the model-parameter
randomisation test, which re-explains with randomised copies of the model).
"""

from .run import EvalResult, evaluate_images, image_id, summarize
from .sanity import sanity_check
from .variants import RANDOM, available

__all__ = ["EvalResult", "RANDOM", "available", "evaluate_images", "image_id", "sanity_check", "summarize"]
