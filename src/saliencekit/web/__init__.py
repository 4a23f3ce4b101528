"""``saliencekit serve``: an interactive explorer in the browser.

``create_app(model)`` builds the Starlette app, ``serve(...)`` runs it with uvicorn, and
``BackgroundServer(app)`` runs it on a thread (notebooks, tests). The modules:

- ``app``: the HTTP routes, security headers and body limits;
- ``jobs``: the one-at-a-time job queue (runs never overlap on the model);
- ``uploads``: decoding and checking uploaded images, the limits, the in-memory image store;
- ``explorer``: the ``Explorer`` (model facts, request checks, running methods and curves), which
  reads the method and metric registries for everything the page offers.
"""

from .app import BackgroundServer, create_app, is_loopback, serve
from .explorer import Explorer
from .uploads import InputError, decode_image

__all__ = [
    "BackgroundServer",
    "Explorer",
    "InputError",
    "create_app",
    "decode_image",
    "is_loopback",
    "serve",
]
