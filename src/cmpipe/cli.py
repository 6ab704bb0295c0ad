"""The ``cmpipe`` command: tasks users need without Snakemake.

    cmpipe check-config CONFIG [--schema SCHEMA]   validate a config, print the resolved one
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import __version__
from .settings import ConfigError, load_config

__all__ = ["main"]


def _default_schema() -> Path:
    return Path.cwd() / "workflow" / "schemas" / "config.schema.yaml"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="cmpipe", description="cmpipe: dynamical galaxy-"
                                 "cluster masses from projected phase space")
    ap.add_argument("--version", action="version", version=f"cmpipe {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    cc = sub.add_parser("check-config", help="validate a config file against the schema "
                        "and print it with defaults filled")
    cc.add_argument("config", type=Path)
    cc.add_argument("--schema", type=Path, default=None,
                    help="JSON schema (default: ./workflow/schemas/config.schema.yaml)")
    args = ap.parse_args(argv)
    if args.command == "check-config":
        try:
            cfg = load_config(args.config, args.schema or _default_schema())
        except (ConfigError, FileNotFoundError) as err:
            print(f"cmpipe: {err}", file=sys.stderr)
            return 1
        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
