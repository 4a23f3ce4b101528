"""saliencekit: faithful, fast saliency maps for PyTorch image classifiers."""

from .api import explain, list_methods
from .api import methods_info as methods
from .data import load_images, sample_images
from .explanation import Explanation
from .models import Preprocessing, get_preprocessing, load_model
from .perf import get_defaults, set_defaults
from .units import Units

from . import metrics  # noqa: E402  (saliencekit.metrics.deletion, ...)

__version__ = "0.1.0"

__all__ = ["explain", "methods", "list_methods", "load_model", "load_images", "sample_images", "Explanation",
           "Preprocessing", "get_preprocessing", "set_defaults", "get_defaults", "Units", "metrics", "__version__"]
