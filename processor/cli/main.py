"""The ``processor`` command: the parser every command group registers its subcommands on, and
the dispatch, which sets up logging, says which config and bucket are in use (``console``), and
turns the project's fatal errors into one line on stderr and an exit code."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from processor import __version__
from processor.cli import bucket, doctor, finetune, mask, models, run, schema, serve, submit
from processor.cli.console import Parser, announce, config_source, report_fatal
from processor.cli.extras import missing_extra
from processor.config import Settings, load_settings
from processor.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, FatalError, StoreAccessError, StoreError
from processor.log import LogFormat, configure_logging

log = logging.getLogger("processor.cli")

#: Commands that run until stopped: their text lines carry the time (``run`` without ``--once`` too).
DAEMONS = frozenset({"serve"})


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
    return f"check store.endpoint_url ({url or 'unset: AWS'}) and that the S3 server there is up"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="processor",
        description="Turn toy photos in a bucket's inputs/ into cartoon variants and a manifest under outputs/.",
        epilog="Configuration: --config PATH, else $PROCESSOR_CONFIG, else ./config.yaml; every key can be "
        "overridden with PROCESSOR_<SECTION>__<KEY>, e.g. PROCESSOR_STORE__KIND=s3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    common = Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: $PROCESSOR_CONFIG or ./config.yaml)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log.level")
    common.add_argument("--log-format", choices=[f.value for f in LogFormat],
                        help="override log.format: json (one JSON event a line), text (for a person), auto "
                        "(json unless stderr is a terminal)")
    common.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bars and no log lines but errors (log.level ERROR, as text)")
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


def _setup_logging(args: argparse.Namespace, settings: Settings | None) -> None:
    quiet = getattr(args, "quiet", False)
    level = getattr(args, "log_level", None) or ("ERROR" if quiet else settings.log.level if settings else "INFO")
    fmt = getattr(args, "log_format", None) or (settings.log.format if settings else LogFormat.AUTO.value)
    daemon = args.command in DAEMONS or (args.command == "run" and not args.once)
    configure_logging(level, fmt, timestamps=daemon, quiet=quiet)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    _setup_logging(args, None)  # an error loading the settings is reported as asked too
    try:
        if not getattr(args, "no_config", False):
            settings = load_settings(args.config)
            _setup_logging(args, settings)
            args.config_source = config_source(args.config)
            announce(args, settings)
        return args.func(args, settings)
    except FatalError as exc:
        hint = _endpoint_hint(settings) if isinstance(exc, StoreAccessError) else ""
        report_fatal(type(exc).__name__, str(exc), exc.exit_code, hint)
        return exc.exit_code
    except StoreError as exc:
        # Retries ran out outside the worker's per-item handling (e.g. during a scan).
        report_fatal(type(exc).__name__, f"store: {exc}", EXIT_INCOMPLETE, _endpoint_hint(settings))
        return EXIT_INCOMPLETE
    except ModuleNotFoundError as exc:
        # A path no command checked up front imported a missing extra's module: the same one line.
        missing = missing_extra(exc, f"processor {args.command}")
        if missing is None:
            raise
        report_fatal(type(missing).__name__, str(missing), missing.exit_code)
        return missing.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
