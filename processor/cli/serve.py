"""``processor serve``: the HTTP API under uvicorn, beside any number of ``processor run`` workers."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

from processor.cli.compose import build_store
from processor.config import Settings
from processor.errors import ConfigError

log = logging.getLogger("processor.api")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", parents=[common], help="serve the HTTP API over the bucket (submit, status, results)",
        description="Serve the HTTP API: POST /v1/jobs writes a photo and its options under inputs/, GET "
        "/v1/jobs/{id} reads its status, progress and results, /v1/jobs/{id}/events streams them; "
        "POST /generate_image_rest_direct is the original prototype's route. CPU only and stateless: run "
        "it beside the workers (processor run), as many replicas as you like. Bearer tokens come from the "
        "variable named by api.keys_env (default PROCESSOR_API_KEYS, comma-separated); unset: open. "
        "Prints the URL it listens on.")
    p.add_argument("--host", help="address to listen on (default api.host: 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=_port, help="TCP port (default api.port: 8080; 0 picks a free one)")
    p.set_defaults(func=cmd_serve)
    return p


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return port


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from processor.api.app import create_app

    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    store = build_store(settings)
    # Bound here, not by uvicorn, so that port 0 works and the port is known before serving.
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
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{bound}"
    app = create_app(settings, store, self_url=url)
    log.info("api_start", extra={"url": url, "store": store.description,
                                 "webhooks": app.state.webhooks is not None})
    print(f"serving {url} over {store.description}", file=sys.stderr, flush=True)
    # The web page: what a newcomer opens (0.0.0.0 listens everywhere; this machine is 127.0.0.1).
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else shown
    print(f"open http://{shown_host}:{bound}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
