"""`alpaca-export`: write rated generations as JSON lines of Alpaca records plus their feedback,
or training data chosen from the feedback (SFT records, DPO preference pairs, KTO labelled
answers).

Usage:
    alpaca-export --out feedback.jsonl                      # the server's store, as it finds it
    alpaca-export --database postgresql://alpaca:...@db:5432/alpaca --include-unrated > all.jsonl
    alpaca-export --data-dir /backups/alpaca --out feedback.jsonl   # alpaca.sqlite3 in a folder
    alpaca-export --format sft --out sft.jsonl              # for alpaca-train --data sft.jsonl
    alpaca-export --format dpo [--include-machine] --out pairs.jsonl
    alpaca-export --format kto --out thumbs.jsonl           # for alpaca-train --method kto
    alpaca-export --backup /backups/alpaca.sqlite3           # a SQLite store, while it is used
    alpaca-export --data-dir /srv/new --restore /backups/alpaca.sqlite3   # into an empty store
    alpaca-export --delete-session ui-3f9a...                # a person's ratings and votes, gone
    alpaca-export --exclude-session ui-77d0... --reason "one script, 400 votes"   # left out
    alpaca-export --include-session ui-77d0...               # counted again
    alpaca-export --list-excluded                            # JSON lines, one per session
    alpaca-export --purge-older-than 30                      # retention: old prompts and answers

Without --database or --data-dir it reads the store the server uses, through the server's own
settings: ALPACA_DATABASE_URL when set, else alpaca.sqlite3 in ALPACA_DATA_DIR (default
~/.local/share/alpaca-serve). So in the server's container a bare `alpaca-export` finds it.

Formats (--format):
    feedback  (the default) one line per (generation, rating): `instruction`, `input`, `output`
              (so `alpaca_serve.training.data.load_records` reads the file as it is), then
              the rating,
              comment, flag, preferred response and the generation's details.
    sft       `{instruction, input, output}`: answers rated up, and every preferred response.
    dpo       `{prompt, chosen, rejected}`: people's pairwise votes (winner over loser, resolved
              by majority) and preferred responses over the answers they correct; the prompt is
              the text the engine received.
    kto       `{prompt, completion, label}`: every rated answer, label true when rated up more
              than down, false when down more than up (thumbs, unpaired), and preferred responses
              (true); flagged answers left out.
What is kept and why: alpaca_serve/feedback/training_data.py.
For sft, dpo and kto the summary on standard error counts what was kept and left out, by reason.
Generations sent as raw prompts are left out: they have no instruction. So are generations
purged by retention (--purge-older-than, ALPACA_LOG_RETENTION_DAYS): their text is gone; the
summary counts them. So are the ratings and votes of excluded sessions (--exclude-session, or
POST /admin/sessions/ID/exclude): kept in the store, left out of every export, and counted.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO, cast

from alpaca_serve.feedback.backup import backup_sqlite, restore
from alpaca_serve.feedback.records import StoreError
from alpaca_serve.feedback.settings import StoreSettings, database_location
from alpaca_serve.feedback.store import (
    DATABASE_FILENAME,
    DEFAULT_DATA_DIR,
    MAX_REASON_CHARS,
    SECONDS_PER_DAY,
    FeedbackStore,
    open_store,
)
from alpaca_serve.feedback.training_data import Selection, dpo_pairs, kto_examples, sft_records

FORMATS = ("feedback", "sft", "dpo", "kto")


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
        help="also write generations nobody rated, with rating null (--format feedback only)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="feedback",
        help="feedback: every (generation, rating) with all its details (the default); "
        "sft: Alpaca records {instruction, input, output} of answers rated up and of preferred "
        "responses, for alpaca-train; dpo: preference pairs {prompt, chosen, rejected} from "
        "people's pairwise votes and preferred responses; kto: answers labelled by their "
        "thumbs {prompt, completion, label} (label true: rated up), and preferred responses, "
        "for alpaca-train --method kto",
    )
    parser.add_argument(
        "--include-machine",
        action="store_true",
        help="--format dpo: also count the votes of an automatic judge (alpaca-eval judge), "
        "which are left out by default",
    )
    copies = parser.add_mutually_exclusive_group()
    copies.add_argument(
        "--backup",
        type=Path,
        metavar="FILE",
        help="instead of exporting, copy the whole SQLite store into FILE as of one moment, "
        "safely while the server writes to it (SQLite's online backup; a PostgreSQL store is "
        "backed up with pg_dump)",
    )
    copies.add_argument(
        "--restore",
        type=Path,
        metavar="FILE",
        help="instead of exporting, put the backup FILE (made by --backup) back into the store "
        "(SQLite or PostgreSQL), which must be empty; all of it or, on an error, nothing",
    )
    copies.add_argument(
        "--delete-session",
        metavar="ID",
        help="instead of exporting, remove everything session ID stored (its ratings, flags, "
        "comments, preferred responses and pairwise votes), as when a person asks for their "
        "data to be deleted; prints how many of each were removed",
    )
    copies.add_argument(
        "--purge-older-than",
        metavar="DAYS",
        help="instead of exporting, empty the prompts and answers of generations recorded more "
        "than DAYS days ago (a positive number; what ALPACA_LOG_RETENTION_DAYS makes the server "
        "do hourly), for a stopped server or a cron job; their ratings and votes stay, so "
        "counts and leaderboards do not change; prints how many were purged",
    )
    copies.add_argument(
        "--exclude-session",
        metavar="ID",
        help="instead of exporting, leave session ID's ratings and votes out of every summary, "
        "leaderboard, report and export from now on (a script stuffed them); they stay stored "
        "and --include-session counts them again; prints how many are left out",
    )
    copies.add_argument(
        "--include-session",
        metavar="ID",
        help="instead of exporting, count an excluded session's ratings and votes again",
    )
    copies.add_argument(
        "--list-excluded",
        action="store_true",
        help="instead of exporting, write every excluded session as a JSON line (session_id, "
        "reason, excluded_by, created_at, ratings, comparisons) to standard output",
    )
    parser.add_argument(
        "--reason",
        metavar="TEXT",
        help=f"with --exclude-session: why, kept with the exclusion (at most {MAX_REASON_CHARS} "
        "characters)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if _maintenance(args) is not None:
        return copy_store(args)
    try:
        check_options(args)
        url, data_dir = database_location(args.database, args.data_dir, StoreSettings())
        if data_dir is not None and not (data_dir / DATABASE_FILENAME).is_file():
            # Opening would create an empty store; an export should not create anything.
            raise StoreError(
                f"no database at {data_dir / DATABASE_FILENAME} (give --database or "
                "--data-dir, or let the server record generations first)"
            )
        with open_store(url) as store:
            selection = select(store, args)
            skipped: Counter = Counter()  # the feedback format's generations left out, by reason
            rows = (
                store.export_rows(args.include_unrated, skipped)
                if selection is None
                else selection.records
            )
            if args.out is None:
                # JSON lines are UTF-8 whatever the locale (typeshed's sys.stdout is a TextIO).
                cast(io.TextIOWrapper, sys.stdout).reconfigure(encoding="utf-8")
                count = write_rows(rows, sys.stdout)
            else:
                count = write_file(rows, args.out)
    except (ValueError, StoreError, OSError) as err:
        print(f"alpaca-export: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"alpaca-export: {describe(args, count, selection, skipped)}", file=sys.stderr)
    return 0


def copy_store(args: argparse.Namespace) -> int:
    """--backup, --restore, --delete-session, --purge-older-than, --exclude-session,
    --include-session or --list-excluded: the whole store copied out or back in, one session's
    records removed, old generations' text purged, a session left out or counted again, or the
    excluded sessions listed; one line saying what."""
    try:
        used = [flag for flag, on in _export_options(args).items() if on]
        if used:
            raise ValueError(f"{used[0]} is for exports, not {_maintenance(args)}")
        check_exclusion(args)
        days = None if args.purge_older_than is None else retention_days(args.purge_older_than)
        url, data_dir = database_location(args.database, args.data_dir, StoreSettings())
        if data_dir is not None and not (data_dir / DATABASE_FILENAME).is_file():
            if args.restore is None:  # opening would create an empty store
                purpose = " to back up" if args.backup is not None else ""
                raise StoreError(f"no database at {data_dir / DATABASE_FILENAME}{purpose}")
        if args.backup is not None:
            with open_store(url) as store:
                counts = backup_sqlite(store, args.backup)
                line = f"backed up {_described(counts)} from {store.backend.description} to "
                line += str(args.backup)
        elif args.delete_session is not None:
            with open_store(url) as store:
                counts = store.delete_session(args.delete_session)
                line = f"deleted {_described(counts)} of session {args.delete_session!r} from "
                line += store.backend.description
        elif args.exclude_session is not None or args.include_session is not None:
            with open_store(url) as store:
                line = change_exclusion(store, args)
        elif args.list_excluded:
            with open_store(url) as store:
                sessions = store.excluded_sessions()
                cast(io.TextIOWrapper, sys.stdout).reconfigure(encoding="utf-8")
                write_rows(sessions, sys.stdout)
                line = f"{_plural(len(sessions), 'excluded session')} in "
                line += store.backend.description
        elif days is not None:
            before = time.time() - days * SECONDS_PER_DAY
            cutoff = datetime.fromtimestamp(before, timezone.utc).isoformat(timespec="seconds")
            with open_store(url) as store:
                purged = store.purge_generations(before)
                line = f"purged {purged} generation{'' if purged == 1 else 's'} recorded before "
                line += f"{cutoff} (older than {days:g} days) in {store.backend.description}"
        else:
            with open_store(url) as store:
                counts = restore(store, args.restore)
                line = f"restored {_described(counts)} from {args.restore} into "
                line += store.backend.description
    except (ValueError, StoreError, OSError) as err:
        print(f"alpaca-export: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"alpaca-export: {line}", file=sys.stderr)
    return 0


def check_exclusion(args: argparse.Namespace) -> None:
    """Refuse, before the store is opened, what --exclude-session, --include-session and
    --reason cannot do."""
    if args.reason is not None and args.exclude_session is None:
        raise ValueError(f"--reason goes with --exclude-session, not {_maintenance(args)}")
    if args.reason is not None and len(args.reason) > MAX_REASON_CHARS:
        raise ValueError(
            f"--reason takes at most {MAX_REASON_CHARS} characters, got {len(args.reason)}"
        )
    for session in (args.exclude_session, args.include_session):
        if session is not None and not session.strip():
            raise ValueError("a session id is needed: it must not be empty")


def change_exclusion(store: FeedbackStore, args: argparse.Namespace) -> str:
    """--exclude-session or --include-session on `store`; the line that says what changed."""
    if args.exclude_session is not None:
        session = args.exclude_session
        created, counts = store.exclude_session(session, args.reason, "alpaca-export")
        state = "excluded" if created else "already excluded"
        return (
            f"session {session!r} {state}: {_described(counts)} left out of every count and "
            f"export in {store.backend.description}"
        )
    session = args.include_session
    was_excluded = store.include_session(session)
    counts = store.session_votes(session)
    if not was_excluded:
        return (
            f"session {session!r} was not excluded: nothing changed in "
            f"{store.backend.description} ({_described(counts)} counted)"
        )
    return f"session {session!r} counted again: {_described(counts)} in {store.backend.description}"


def retention_days(text: str) -> float:
    """--purge-older-than's DAYS as a number; ValueError, in words, for anything but a positive,
    finite number of days."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not math.isfinite(days) or days <= 0:
        raise ValueError(
            f"--purge-older-than takes a positive number of days (such as 30), got {text!r}"
        )
    return days


def _maintenance(args: argparse.Namespace) -> str | None:
    """The store-maintenance option given instead of an export (they exclude each other), or
    None for an export."""
    chosen = {
        "--backup": args.backup is not None,
        "--restore": args.restore is not None,
        "--delete-session": args.delete_session is not None,
        "--purge-older-than": args.purge_older_than is not None,
        "--exclude-session": args.exclude_session is not None,
        "--include-session": args.include_session is not None,
        "--list-excluded": args.list_excluded,
    }
    return next((flag for flag, on in chosen.items() if on), None)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _export_options(args: argparse.Namespace) -> dict[str, bool]:
    return {
        "--out": args.out is not None,
        "--format": args.format != "feedback",
        "--include-unrated": args.include_unrated,
        "--include-machine": args.include_machine,
    }


def _described(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {table}" for table, count in counts.items())


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that do not go with the chosen format."""
    if args.reason is not None:
        raise ValueError("--reason goes with --exclude-session")
    if args.include_unrated and args.format != "feedback":
        raise ValueError(f"--include-unrated goes with --format feedback, not {args.format}")
    if args.include_machine and args.format != "dpo":
        raise ValueError(f"--include-machine goes with --format dpo, not {args.format}")


def select(store: FeedbackStore, args: argparse.Namespace) -> Selection | None:
    """The training data the format asks for; None for the feedback format (written as read)."""
    if args.format == "sft":
        return sft_records(store)
    if args.format == "dpo":
        return dpo_pairs(store, include_machine=args.include_machine)
    if args.format == "kto":
        return kto_examples(store)
    return None


def describe(
    args: argparse.Namespace, count: int, selection: Selection | None, skipped: Counter
) -> str:
    """The line that ends an export: how many written where, and for sft, dpo and kto, why;
    for the feedback format, how many generations retention had purged and how many ratings of
    excluded sessions there were (left out)."""
    nouns = {"feedback": "record", "sft": "sft record", "dpo": "dpo pair", "kto": "kto answer"}
    noun = nouns[args.format] + ("" if count == 1 else "s")
    line = f"wrote {count} {noun} to {args.out or 'standard output'}"
    if selection is not None:
        return f"{line}: {selection.summary()}"
    left_out = []
    if skipped["excluded_rating"]:
        ratings = _plural(skipped["excluded_rating"], "rating")
        left_out.append(f"{ratings} from excluded sessions")
    if skipped["purged"]:
        left_out.append(f"{_plural(skipped['purged'], 'generation')} purged by retention")
    return line + (f"; left out {', '.join(left_out)}" if left_out else "")


def write_file(rows: Iterable[dict], out: Path) -> int:
    """Write `rows` to a temporary file beside `out`, then move it into place; returns how many."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            count = write_rows(rows, stream)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def write_rows(rows: Iterable[dict], stream: TextIO) -> int:
    """Write one JSON object per line; returns how many."""
    count = 0
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
