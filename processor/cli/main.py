"""The ``processor`` command: the parser every command group registers its subcommands on, and
the dispatch, which turns the project's fatal errors into one line on stderr and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from processor import __version__
from processor.cli import bucket, doctor, finetune, mask, models, run, schema, serve, submit
from processor.config import Settings, load_settings
from processor.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, FatalError, StoreAccessError, StoreError
from processor.log import configure_logging
from processor.redact import redact

log = logging.getLogger("processor.cli")


def _endpoint_hint(settings: Settings | None) -> str:
    """What to check when a remote store keeps failing: usually the endpoint (a wrong host or port
    times out or refuses; a web server that is not S3 answers in ways botocore cannot read)."""
    if settings is None or settings.store.kind == "local":
        return ""
    url = settings.store.endpoint_url
    if url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.username or parts.password:  # never print credentials written into the URL
            url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    return f"\n  check store.endpoint_url ({url or 'unset: AWS'}) and that the S3 server there is up"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="Turn toy photos in a bucket's inputs/ into cartoon variants and a manifest under outputs/.",
        epilog="Configuration: --config PATH, else $PROCESSOR_CONFIG, else ./config.yaml; every key can be "
        "overridden with PROCESSOR_<SECTION>__<KEY>, e.g. PROCESSOR_STORE__KIND=s3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: $PROCESSOR_CONFIG or ./config.yaml)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log.level")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parsers(sub, common)
    mask.add_parser(sub, common)
    submit.add_parser(sub, common)
    bucket.add_parsers(sub, common)
    doctor.add_parser(sub, common)
    models.add_parser(sub, common)
    schema.add_parser(sub, common)
    serve.add_parser(sub, common)
    finetune.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        if not getattr(args, "no_config", False):
            settings = load_settings(args.config)
            configure_logging(args.log_level or settings.log.level, settings.log.format)
            args.config_source = args.config or os.environ.get("PROCESSOR_CONFIG") or "config.yaml"
        return args.func(args, settings)
    except FatalError as exc:
        if not logging.getLogger().handlers:
            configure_logging()
        log.error("fatal", extra={"error": type(exc).__name__, "detail": str(exc)})
        hint = _endpoint_hint(settings) if isinstance(exc, StoreAccessError) else ""
        print(f"error: {redact(str(exc))}{hint}", file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:
        # Retries ran out outside the worker's per-item handling (e.g. during a scan).
        print(f"error: store: {redact(str(exc))}{_endpoint_hint(settings)}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
