"""Serving a trained model online: ``jaxrec serve`` (the ``serve`` extra: FastAPI and uvicorn).

* :class:`ServingModel` (:mod:`jaxrec.serve.engine`): batched adapt-and-rank, compiled per shape bucket at start-up;
* :class:`MicroBatcher` (:mod:`jaxrec.serve.batching`): concurrent requests gathered into one compiled call;
* :class:`Catalogue` (:mod:`jaxrec.serve.requests`): item lookup, title search and the checks of a request;
* :func:`recommend_users` (:mod:`jaxrec.serve.batch`): a file of many new users ranked offline by the same engine;
* :func:`create_app` (:mod:`jaxrec.serve.app`, needs the extra): the HTTP service and its demo page.

The web modules load on first use, so that the engine works without the extra installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import socket

from jaxrec.serve.batch import read_users, recommend_users
from jaxrec.serve.batching import MicroBatcher
from jaxrec.serve.engine import Bucket, Ranked, ServingModel, UserInput
from jaxrec.serve.requests import Catalogue, RequestError, UserSupport

__all__ = [
    "Bucket",
    "Catalogue",
    "MicroBatcher",
    "Ranked",
    "RequestError",
    "ServingModel",
    "UserInput",
    "UserSupport",
    "create_app",
    "missing_extra",
    "read_users",
    "recommend_users",
    "run_server",
]

_EXTRA = ("fastapi", "uvicorn")


def missing_extra() -> list[str]:
    """The packages of the ``serve`` extra that are not installed (empty when the service can run)."""
    return [name for name in _EXTRA if importlib.util.find_spec(name) is None]


def _web():
    missing = missing_extra()
    if missing:
        raise ImportError(f"the service needs {', '.join(missing)}: pip install 'jaxrec[serve]'")
    return importlib.import_module("jaxrec.serve.app")


def create_app(model: ServingModel, **options):
    """The FastAPI service of a warmed-up model (:func:`jaxrec.serve.app.create_app`)."""
    return _web().create_app(model, **options)


def run_server(
    app, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 1024, sock: socket.socket | None = None
) -> None:
    """Serve ``app`` with uvicorn until SIGINT / SIGTERM (one process; the model's calls run on its worker thread).

    Args:
      app: the application of :func:`create_app`.
      host: the address to bind (loopback unless told otherwise).
      port: the port.
      max_connections: connections beyond this many are answered 503 rather than queued without bound.
      sock: a socket already bound to ``host:port`` (held since before the model was loaded, so that nothing took
        the port meanwhile), or None to bind it here.
    """
    _web()
    uvicorn = importlib.import_module("uvicorn")
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", limit_concurrency=max_connections, access_log=False
    )
    uvicorn.Server(config).run(sockets=None if sock is None else [sock])
