"""``processor schema``: the JSON Schemas of the wire format (manifest, failure record)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from processor.config import Settings
from processor.manifest import json_schemas


def cmd_schema(args: argparse.Namespace, settings: Settings | None) -> int:
    schemas = json_schemas()
    if args.write:
        target = Path(args.write)
        target.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (target / name).write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {', '.join(schemas)} to {target}")
    else:
        print(json.dumps(schemas, indent=2))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``schema`` (it reads no config)."""
    p = sub.add_parser("schema", help="print or write the manifest and failure-record JSON Schemas",
                       description="Print the JSON Schemas of manifest.json and of failure records (the wire "
                       "format other tools read), or write them as *.schema.json files; docs/ holds the "
                       "committed copies.")
    p.add_argument("--write", metavar="DIR", help="write *.schema.json files into DIR")
    p.set_defaults(func=cmd_schema, no_config=True)
