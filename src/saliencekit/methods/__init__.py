"""Method implementations; importing this package registers them all."""

from . import attitude, gradient, integrated, smoothgrad  # noqa: F401
from . import igos  # noqa: F401
from . import cam  # noqa: F401
from .base import REGISTRY

__all__ = ["REGISTRY"]
