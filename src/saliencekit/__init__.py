"""saliencekit: faithful, fast saliency maps for PyTorch image classifiers.

The public surface: :func:`explain` and :class:`Explanation`, :func:`list_methods`,
:func:`load_model` / :func:`load_images` / :func:`sample_images`, :class:`Units` (unit targets),
:func:`set_defaults` / :func:`get_defaults` (speed settings) and the subpackages ``metrics``,
``methods``, ``evaluation`` and ``core``.
"""

from . import metrics
from .api import explain, list_methods
from .core.speed import get_defaults, set_defaults
from .core.units import Units
from .data import load_images, sample_images
from .explanation import Explanation
from .models import Preprocessing, get_preprocessing, load_model

__version__ = "0.1.0"

__all__ = ["explain", "list_methods", "load_model", "load_images", "sample_images", "Explanation", "Preprocessing",
           "get_preprocessing", "set_defaults", "get_defaults", "Units", "metrics", "__version__"]
