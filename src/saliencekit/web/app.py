"""The HTTP side of the explorer: a small Starlette app and the uvicorn runner.

Routes (all answers JSON except the page, its two assets and the images):

- ``GET  /``                              the page (one HTML file, one script, one style sheet)
- ``GET  /static/{app.js|style.css}``     served from memory; any other name is 404
- ``GET  /api/info``                      model, samples, methods with their page parameters, limits
- ``POST /api/image``                     raw image bytes in the body (size-limited), or ``?sample=NAME``
- ``GET  /api/images/{id}.png``           the 224 x 224 crop the model sees
- ``POST /api/estimate``                  the same JSON -> estimated seconds (rows per method x measured
                                            seconds per row), ``long`` when the page should ask first
- ``POST /api/explain``                   JSON request -> ``{"job": id}`` (queued, one worker)
- ``GET  /api/jobs/{id}``                 state, queue position, progress; the results when done
- ``POST /api/jobs/{id}/cancel``          cancel: a queued run leaves the queue, a running one stops
                                            at its method's next progress report
- ``GET  /api/jobs/{id}/files/{name}``    a map PNG or ``saliency.pt`` of that job (from memory)

Nothing a request contains is used as a file-system path: ids are random hex looked up in
dictionaries, samples are looked up by name in the bundled list, and static assets are read once
at start-up from the package.

Every route answers other verbs with 405 (and ``Allow``). State-changing requests (anything but
GET, HEAD, OPTIONS) from another site are refused with 403: a browser names the page's origin in
``Origin`` (and ``Sec-Fetch-Site``), which must be this server's own; clients that send neither
(curl, scripts) are accepted. A client that goes away mid-request is noted at debug level, not
logged as an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from importlib import resources
from typing import Dict, Optional, Sequence
from urllib.parse import urlsplit

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..models import ModelSpec, load_model
from .explorer import Explorer
from .jobs import FINISHED, JobQueue, QueueFull
from .uploads import InputError

log = logging.getLogger("saliencekit.web")

MAX_JSON_BYTES = 64 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
NAME_RE = re.compile(r"[^A-Za-z0-9._ -]+")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _static_assets() -> Dict[str, bytes]:
    root = resources.files("saliencekit.web").joinpath("static")
    return {name: root.joinpath(name).read_bytes() for name in STATIC_TYPES}


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_limited(request: Request, limit: int, what: str) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes, whether announced or streamed."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise InputError("Bad Content-Length header.")
        if int(cl) > limit:
            raise InputError(f"The {what} is {int(cl) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB.", status=413)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise InputError(f"The {what} is larger than the limit of {limit / 1e6:.1f} MB.", status=413)
    return bytes(buf)


def _origin_tuple(url: str) -> Optional[tuple]:
    """(scheme, host, port) of an origin or base URL, default ports filled in; None if malformed."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme)


class _SameOriginWrites:
    """Refuse (403) state-changing requests that a browser sends on behalf of another site.

    A browser names the requesting page's origin in ``Origin`` and says how it relates to the
    target in ``Sec-Fetch-Site``. A request is refused when ``Sec-Fetch-Site`` is present and is
    not ``same-origin`` (or ``none``: typed by the user), or when ``Origin`` is present and is not
    this server's origin (scheme and ``Host`` of the request) nor one of ``extra_origins``.
    Requests with neither header come from non-browser clients (curl, scripts) and pass: they
    cannot be forged by a web page.
    """

    def __init__(self, app, extra_origins: Sequence[str] = ()):
        self.app = app
        self.extra = {t for t in (_origin_tuple(o) for o in extra_origins) if t is not None}

    def _refusal(self, scope) -> Optional[str]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        site = headers.get("sec-fetch-site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {site[:40]!r}"
        origin = headers.get("origin")
        if origin is None:
            return None
        own = _origin_tuple(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")
        theirs = _origin_tuple(origin) if origin.strip().lower() != "null" else None
        if theirs is None or (theirs != own and theirs not in self.extra):
            return f"Origin {origin[:80]!r} is not this server's"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"].upper() not in SAFE_METHODS:
            why = self._refusal(scope)
            if why is not None:
                log.warning("refused a cross-site %s %s: %s", scope["method"], scope.get("path", ""), why)
                response = _error(f"Cross-site request refused ({why}); open the page from this server.", 403)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class _QuietDisconnects:
    """A client that closes the connection while its request body is read (a closed tab, a
    cancelled upload) ends that request quietly: noted at debug level, no traceback, no answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            return await self.app(scope, receive, send)
        except ClientDisconnect:
            if scope["type"] == "http":
                log.debug("client disconnected during %s %s", scope["method"], scope.get("path", ""))


class _SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode("latin-1").lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = dict(message, headers=headers)
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def create_app(model: torch.nn.Module, model_name: str = "model", *, max_upload_bytes: Optional[int] = None,
               max_pending: int = 16, explorer: Optional[Explorer] = None,
               allowed_hosts: Optional[Sequence[str]] = LOOPBACK_HOSTS, allowed_origins: Sequence[str] = (),
               **explorer_options) -> Starlette:
    """The explorer app for ``model`` (an ``nn.Module``; ``load_model`` attaches class names and
    preprocessing). ``max_upload_bytes`` caps uploads (default 10 MB); ``max_pending`` caps the
    queue of waiting runs. ``allowed_hosts`` are the names the browser may use in the Host header
    (default: loopback names only, which stops DNS-rebinding pages from reaching a local server;
    ``None`` or ``["*"]`` accepts any, for a server bound to a public interface).
    ``allowed_origins``: origins besides the server's own from which a browser may send POSTs
    (e.g. ``"https://explorer.example.org"`` behind a TLS proxy). The app's ``state`` holds
    ``explorer`` and ``jobs`` (for tests)."""
    if isinstance(allowed_origins, str):
        allowed_origins = [allowed_origins]
    for origin in allowed_origins:
        if not isinstance(origin, str) or _origin_tuple(origin) is None:
            raise ValueError(f"allowed_origins: expected origins such as 'https://host:port', got {origin!r}")
    if explorer is None:
        if max_upload_bytes is not None:
            explorer_options["max_upload_bytes"] = max_upload_bytes
        explorer = Explorer(model, model_name, **explorer_options)
    jobs = JobQueue(max_pending=max_pending, user_error=InputError)
    assets = _static_assets()

    async def page(request: Request):
        return Response(assets["index.html"], media_type=STATIC_TYPES["index.html"])

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in assets or name == "index.html":
            return _error("Not found.", 404)
        return Response(assets[name], media_type=STATIC_TYPES[name])

    async def info(request: Request):
        return JSONResponse(explorer.info())

    async def upload(request: Request):
        try:
            sample = request.query_params.get("sample")
            if sample is not None:
                image_id, stored = await run_in_threadpool(explorer.add_sample, sample)
            else:
                raw = await _read_limited(request, explorer.max_upload_bytes, "upload")
                name = NAME_RE.sub("", request.query_params.get("name", "upload"))[:64] or "upload"
                image_id, stored = await run_in_threadpool(explorer.add_upload, raw, name)
        except InputError as e:
            return _error(str(e), e.status)
        return JSONResponse({"image_id": image_id, "name": stored.name, "notes": stored.notes, "crop": stored.crop,
                             "top5": stored.top5,
                             "predicted": stored.top5[0], "preview": f"/api/images/{image_id}.png"})

    async def preview(request: Request):
        try:
            stored = explorer.get_image(request.path_params["image_id"])
        except InputError as e:
            return _error(str(e), e.status)
        return Response(stored.preview_png, media_type="image/png")

    async def read_request(request: Request):
        raw = await _read_limited(request, MAX_JSON_BYTES, "request")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError("The request is not valid JSON.") from None
        return explorer.parse_request(body)

    async def estimate(request: Request):
        try:
            req = await read_request(request)
            est = await run_in_threadpool(explorer.estimate, req)
        except InputError as e:
            return _error(str(e), e.status)
        return JSONResponse(est)

    async def submit(request: Request):
        try:
            req = await read_request(request)
            job_id = jobs.submit(lambda progress: explorer.run(req, progress))
        except InputError as e:
            return _error(str(e), e.status)
        except QueueFull as e:
            return _error(str(e), 429)
        return JSONResponse({"job": job_id, "status": jobs.status(job_id)})

    async def cancel(request: Request):
        job_id = request.path_params["job_id"]
        before = jobs.status(job_id)
        if before is None:
            return _error("Unknown or expired run.", 404)
        if before["state"] in FINISHED:
            return JSONResponse(dict(before, error=f"The run has already ended ({before['state']})."),
                                status_code=409)
        return JSONResponse(jobs.cancel(job_id))

    async def job_status(request: Request):
        job_id = request.path_params["job_id"]
        st = jobs.status(job_id)
        if st is None:
            return _error("Unknown or expired run.", 404)
        if st["state"] == "done":
            res = jobs.result(job_id)
            payload = dict(res.payload)
            base = f"/api/jobs/{job_id}/files/"
            payload["files"] = {name: base + name for name in res.files}
            st["result"] = payload
        return JSONResponse(st)

    async def job_file(request: Request):
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        res = jobs.result(job_id)
        if res is None or name not in res.files:
            return _error("Unknown or expired file.", 404)
        body, media = res.files[name]
        headers = {}
        if request.query_params.get("download"):
            headers["content-disposition"] = f'attachment; filename="{name}"'
        return Response(body, media_type=media, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            jobs.stop()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/image", upload, methods=["POST"]),
        Route("/api/images/{image_id}.png", preview, methods=["GET"]),
        Route("/api/estimate", estimate, methods=["POST"]),
        Route("/api/explain", submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_status, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/files/{name}", job_file, methods=["GET"]),
    ]

    async def not_found(request, exc):
        return _error("Not found.", 404)

    async def wrong_verb(request, exc):
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
        return JSONResponse({"error": f"{request.method} is not allowed here; use {allow or 'another method'}."},
                            status_code=405, headers={"Allow": allow} if allow else None)

    async def server_error(request, exc):
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error("Internal server error (see the server log).", 500)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: wrong_verb, 500: server_error})
    app.add_middleware(_SameOriginWrites, extra_origins=list(allowed_origins))
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_QuietDisconnects)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.state.explorer = explorer
    app.state.jobs = jobs
    return app


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(model: str | ModelSpec | torch.nn.Module = "efficientnet-lite0", host: str = "127.0.0.1", port: int = 7860,
          device: str = "cpu", log_level: str = "warning", **options) -> None:
    """Load ``model`` (anything ``load_model`` takes: a name, a model file, ``package.module:callable``,
    a ``ModelSpec`` from ``model_spec``; or a module) and serve the explorer until interrupted."""
    import uvicorn

    if isinstance(model, torch.nn.Module):
        name, net = type(model).__name__, model.to(device)
    else:
        net = load_model(model, device=device)
        name = getattr(net, "saliencekit_name", None) or str(model)
    if not is_loopback(host):
        options.setdefault("allowed_hosts", None)
    app = create_app(net, name, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """Run the app with uvicorn on a thread (tests, notebooks): ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="saliencekit-web-server", daemon=True)
        self.url: Optional[str] = None

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["BackgroundServer", "create_app", "is_loopback", "serve"]
