"""The HTTP server: ``create_app`` (app.py) and the ``bertforge serve`` command (``serve``, here).

One model is loaded at start-up; SIGHUP loads it again. The package: schemas.py (paths, request and
response bodies), metrics.py (/metrics), batcher.py (micro-batching, the bounded queue), gate.py (API key and body
size), app.py (the model served and its endpoints).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BertforgeError
from .app import create_app

__all__ = ["access_line", "bind", "create_app", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), so that a busy port fails before the model loads."""
    if not 0 <= port <= 65535:
        raise BertforgeError(f"port {port} is not a port number (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        raise BertforgeError(f"cannot listen on {host}: not an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BertforgeError(f"port {port} on {host} is in use") from None
        if e.errno == errno.EACCES:
            raise BertforgeError(f"port {port} on {host} needs privileges: choose one above 1023") from None
        raise BertforgeError(f"cannot listen on {host} port {port}: {e.strerror}") from None
    return sock


def access_line(address: str, api_key: str | None) -> str | None:
    """What the start-up message says about access: the key needed, or a warning when a server
    without one listens beyond this machine."""
    if api_key:
        return "bertforge: /v1/* and /metrics need 'Authorization: Bearer KEY'"
    if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return (
            f"bertforge: warning: no API key, and listening on {address}: anyone who can reach this machine can use "
            "the model (--api-key or BERTFORGE_API_KEY)"
        )
    return None


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    echo: Callable[[str], None] = print,
    **settings: Any,
) -> None:
    """Serve ``model`` until SIGINT or SIGTERM, then finish the requests in flight and return; SIGHUP
    loads the model again, in a thread, while the one loaded answers."""
    import uvicorn

    reloading = threading.Lock()

    def reload(sig, frame) -> None:
        def run() -> None:
            with reloading:
                app.state.reload(echo)

        if reloading.locked():
            echo("bertforge: a reload is under way already")
        else:
            threading.Thread(target=run, name="bertforge-reload", daemon=True).start()

    class Server(uvicorn.Server):
        # uvicorn re-raises the stop signal once it has shut down; a graceful stop ends with status 0
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            # a second signal while the requests in flight finish: stop at once (uvicorn's own forced exit
            # cancels its lifespan task and prints that as a traceback)
            if self.should_exit:
                echo("bertforge: stopped without answering the requests in flight")
                os._exit(128 + sig)
            super().handle_exit(sig, frame)

    sock = bind(host, port)
    try:
        app = create_app(model, **settings)
        address, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        echo(f"bertforge: serving {model} on http://{shown}:{port} (API docs at /docs); Ctrl-C stops")
        if line := access_line(address, settings.get("api_key")):
            echo(line)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=30)
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
    echo("bertforge: stopped")
