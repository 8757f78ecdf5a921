"""``processor serve``: the HTTP API under uvicorn, beside any number of ``processor run`` workers."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from processor.cli.compose import build_store
from processor.config import Settings

log = logging.getLogger("processor.api")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", parents=[common], help="serve the HTTP API over the bucket (submit, status, results)",
        description="Serve the HTTP API: POST /v1/jobs writes a photo and its options under inputs/, GET "
        "/v1/jobs/{id} reads its status, progress and results, /v1/jobs/{id}/events streams them; "
        "POST /generate_image_rest_direct is the original prototype's route. CPU only and stateless: run "
        "it beside the workers (processor run), as many replicas as you like. Clients come from the "
        "variable named by api.keys_env (default PROCESSOR_API_KEYS: token, name:token or "
        "name:token:admin, comma-separated); unset: one admin token is made at start, and the URL "
        "printed carries it. Prints the URL it listens on.")
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
    from processor.api.server import serve

    return serve(settings, build_store(settings), host=args.host, port=args.port)
