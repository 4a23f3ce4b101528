"""``saliencekit serve``: an interactive explorer in the browser.

``create_app(model)`` builds the Starlette app, ``serve(...)`` runs it with uvicorn, and
``BackgroundServer(app)`` runs it on a thread (notebooks, tests). The page, its options and the
checks behind them live in ``core.py``; the one-at-a-time job queue in ``jobs.py``.
"""

from .app import BackgroundServer, create_app, is_loopback, serve
from .explorer import Explorer, InputError, decode_image

__all__ = [
           "PARAMS",
           "BackgroundServer",
           "Explorer",
           "InputError",
           "create_app",
           "decode_image",
           "is_loopback",
           "serve",
]
