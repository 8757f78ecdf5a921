"""``processor serve``'s server: the socket, the app, the URL it prints, and uvicorn's limits.

- The socket is bound here, not by uvicorn, so that port 0 works and the URL is known before
  serving.
- Without configured clients the app has a generated admin token (``processor.api.clients``): the
  URL printed carries it (``http://127.0.0.1:8080/?token=...``, as Jupyter does), and opening it
  logs the browser in. It is printed to the terminal (stderr), never logged as an event.
- Slow clients are timed out: a connection that has not sent a request's headers within
  ``api.header_timeout_s`` (of connecting, or of its previous response) is closed
  (``HeaderDeadlineProtocol``); bodies have ``processor.api.limits``'s deadline; at most
  ``api.max_connections`` connections are served at once (uvicorn answers 503 past it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

from uvicorn.protocols.http.h11_impl import H11Protocol

from processor.api.app import create_app
from processor.config import Settings
from processor.errors import ConfigError
from processor.store.base import ObjectStore
from processor.tracing import build_tracer

log = logging.getLogger("processor.api")

#: Seconds uvicorn keeps an idle connection between two requests.
KEEP_ALIVE_S = 5
#: Seconds a stopping server gives its requests (event streams and waits end first).
GRACEFUL_SHUTDOWN_S = 10
#: The service name of the API's spans (``OTEL_SERVICE_NAME`` overrides it).
TRACING_SERVICE = "toy-cartoonizer-api"


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose request headers are not complete
    within ``header_timeout_s``. uvicorn's own keep-alive timeout stops at a request's first byte,
    so a client sending its headers a byte at a time would hold the connection forever."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since_cycle = self.cycle
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s,
                                                                              self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is self._waiting_since_cycle and not self.transport.is_closing():
            log.info("header_timeout", extra={"client": self.client[0] if self.client else None,
                                              "seconds": self.header_timeout_s})
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_since_cycle:  # a request's headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers get their own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


#: Connections the kernel queues before the server accepts them (uvicorn's default).
LISTEN_BACKLOG = 2048


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening TCP socket on ``host:port`` and the URL it serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only
    # for sockets that say they are TCP. Without it, Nagle held each response's body behind its
    # headers until the client's delayed ACK: every request took 44 ms here (bench/api.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or api.port") from None
    # Listening now, not when uvicorn starts: the URL is printed before that, and a client that
    # reads it (a test, a supervisor's probe) must queue in the backlog rather than be refused.
    sock.listen(LISTEN_BACKLOG)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}"


def serve(settings: Settings, store: ObjectStore, *, host: str | None = None, port: int | None = None) -> int:
    """Serve the API over ``store`` until stopped (SIGINT/SIGTERM); the exit code."""
    import uvicorn

    api = settings.api
    sock, url = bind(host or api.host, api.port if port is None else port)
    tracer = build_tracer(settings.tracing, TRACING_SERVICE)
    app = create_app(settings, store, self_url=url, tracer=tracer)
    access = app.state.access
    log.info("api_start", extra={"url": url, "store": store.description, "access": access.mode.value,
                                 "webhooks": app.state.webhooks is not None})
    print(f"serving {url} over {store.description}", file=sys.stderr, flush=True)
    # The web page: what a newcomer opens (0.0.0.0 listens everywhere; this machine is 127.0.0.1).
    page = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://127.0.0.1:") + "/"
    if access.generated_token is not None:
        print(f"no clients in {api.keys_env}: made one admin token for this run", file=sys.stderr)
        page += f"?token={access.generated_token}"
    print(f"open {page}", file=sys.stderr, flush=True)
    protocol = type("Protocol", (HeaderDeadlineProtocol,), {"header_timeout_s": api.header_timeout_s})
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http=protocol,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, timeout_keep_alive=KEEP_ALIVE_S,
                            limit_concurrency=api.max_connections)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        tracer.close()
    return 0


__all__ = ["HeaderDeadlineProtocol", "bind", "serve"]
