"""`alpaca-export`: write rated generations as JSON lines of Alpaca records plus their feedback.

Usage:
    alpaca-export --out feedback.jsonl                      # the server's store, as it finds it
    alpaca-export --database postgresql://alpaca:...@db:5432/alpaca --include-unrated > all.jsonl
    alpaca-export --data-dir /backups/alpaca --out feedback.jsonl   # alpaca.sqlite3 in a folder

Without --database or --data-dir it reads the store the server uses, through the server's own
settings: ALPACA_DATABASE_URL when set, else alpaca.sqlite3 in ALPACA_DATA_DIR (default
~/.local/share/alpaca-serve). So in the server's container a bare `alpaca-export` finds it.

Each line has `instruction`, `input`, `output` (so `training.data.load_records` reads the file
as it is), then the rating, comment, flag, preferred response and the generation's details.
Generations sent as raw prompts are left out: they have no instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from server.feedback.records import StoreError
from server.feedback.store import (
    DATABASE_FILENAME,
    DEFAULT_DATA_DIR,
    FeedbackStore,
    default_database_url,
    open_store,
)
from server.settings import StoreSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-export",
        description="Export recorded generations and their ratings as JSON lines, one "
        "(generation, rating) per line, in the Alpaca format plus feedback fields.",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///ABSOLUTE/PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
        "(default: the server's store: ALPACA_DATABASE_URL when set, else "
        f"sqlite:///DATA_DIR/{DATABASE_FILENAME})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder of a server's SQLite store ({DATABASE_FILENAME}), used when --database is "
        f"not given (default: ALPACA_DATA_DIR, else {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="file to write (replaced only once the export is complete; default: standard output)",
    )
    parser.add_argument(
        "--include-unrated",
        action="store_true",
        help="also write generations nobody rated, with rating null",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url, data_dir = database_location(args, StoreSettings())
        if data_dir is not None and not (data_dir / DATABASE_FILENAME).is_file():
            # Opening would create an empty store; an export should not create anything.
            raise StoreError(
                f"no database at {data_dir / DATABASE_FILENAME} (give --database or "
                "--data-dir, or let the server record generations first)"
            )
        with open_store(url) as store:
            if args.out is None:
                sys.stdout.reconfigure(encoding="utf-8")  # JSON lines are UTF-8 whatever the locale
                count = write_rows(store, sys.stdout, args.include_unrated)
            else:
                count = write_file(store, args.out, args.include_unrated)
    except (ValueError, StoreError, OSError) as err:
        print(f"alpaca-export: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    noun = "record" if count == 1 else "records"
    print(
        f"alpaca-export: wrote {count} {noun} to {args.out or 'standard output'}", file=sys.stderr
    )
    return 0


def database_location(args: argparse.Namespace, settings: StoreSettings) -> tuple[str, Path | None]:
    """The URL of the database to export, and the folder when it is the SQLite file of a data
    folder: --database, else --data-dir, else the server's store as its settings say."""
    if args.database:
        return args.database, None
    if args.data_dir is None and settings.database_url:
        return settings.database_url, None
    data_dir = (args.data_dir if args.data_dir is not None else settings.data_dir).expanduser()
    return default_database_url(data_dir), data_dir


def write_file(store: FeedbackStore, out: Path, include_unrated: bool) -> int:
    """Write the export to a temporary file beside `out`, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            count = write_rows(store, stream, include_unrated)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def write_rows(store: FeedbackStore, stream: TextIO, include_unrated: bool) -> int:
    """Write one JSON object per line; returns how many."""
    count = 0
    for row in store.export_rows(include_unrated=include_unrated):
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
