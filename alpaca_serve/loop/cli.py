"""`alpaca-loop`: the Alpaca cycle against a running server, one resumable stage at a time.

Usage:
    alpaca-loop run --auto --adapters-dir ADAPTERS --data-dir DATA --limit 16   # every stage left
    alpaca-loop sft --work-dir loop-run --adapters-dir ADAPTERS                # one stage
    alpaca-loop compare --work-dir loop-run --limit 20
    alpaca-loop status --work-dir loop-run                                     # what is done
    make loop              # starts a server, runs `alpaca-loop run --auto`, stops the server

Stages, in order (loop/stages.py): sft, publish, compare, prefer, report. The work folder
(`--work-dir`, default loop-run) holds each stage's files and `loop_state.json`, which records the
finished stages and the settings of the first run: `run` starts at the first stage not finished,
so a rerun after a failure (or Ctrl-C) resumes there, and a rerun after success does nothing.
Naming a stage runs it again, and the later stages, now stale, run again at the next `run`.

Errors are one line, `alpaca-loop: error: ...`, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import cast

from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.evaluation.answers import EvaluationError
from alpaca_serve.loop import stages
from alpaca_serve.loop.serving import ServingError
from alpaca_serve.loop.settings import LoopSettings, SettingsError
from alpaca_serve.loop.stages import LoopContext, LoopError
from alpaca_serve.loop.state import STAGES, LoopState, StateError

PROG = "alpaca-loop"
DEFAULT_WORK_DIR = Path("loop-run")
COMMANDS = {
    "run": "every stage not finished yet, in order (a finished work folder: nothing to do)",
    "sft": "LoRA fine-tune of the served base on Alpaca data; the adapter goes live by name",
    "publish": "merge the adapter into the base, make a weight diff, recover from it and check "
    "the recovered model is the merged one, tensor by tensor",
    "compare": "the base and the adapter answer the evaluation instructions; blind pairs for "
    "the demo's Compare tab; with --auto, machine votes",
    "prefer": "votes -> DPO pairs -> a DPO adapter, live by name; it answers and is paired with "
    "the others (judged with --auto)",
    "report": "win rates of each model against the others by method of judgement, with 95%% "
    "intervals; a table, details and charts",
    "status": "print the finished stages and where their files are",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        state = LoopState.load(args.work_dir)
        if args.command == "status":
            print_status(state)
            return 0
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(LoopSettings)}
        settings = LoopSettings.resolve(given, state.settings)
        state.settings = settings.to_state()
        state.save()
        run_stages(args.command, settings, state, progress=not args.no_progress)
    except (
        LoopError,
        SettingsError,
        StateError,
        ServingError,
        EvaluationError,
        APIRequestError,
    ) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; `{PROG} run` resumes", file=sys.stderr)
        return 2
    return 0


def run_stages(command: str, settings: LoopSettings, state, progress: bool = True) -> None:
    """Run `command`'s stages: the ones left for `run`, else the one named (again)."""
    ctx = LoopContext(settings, state, progress)
    if command == "run":
        # From the first stage not finished on: a later one finished before it (a report made
        # while prefer could not run) is stale.
        remaining = state.remaining()
        todo = list(STAGES[STAGES.index(remaining[0]) :]) if remaining else []
        if todo:
            state.forget_from(todo[0])
        for stage in STAGES:
            if stage not in todo:
                print(f"{stage}: finished earlier, skipped ({state.stages[stage].summary})")
    else:
        missing = state.missing_before(command)
        if missing:
            raise LoopError(f"{command} needs {', '.join(missing)} first: run `{PROG} run`")
        stale = state.forget_from(command)
        if len(stale) > 1:
            print(f"{command}: running again; {', '.join(stale[1:])} will run again too")
        todo = [command]
    for stage in todo:
        number = STAGES.index(stage) + 1
        print(f"\n== {stage} ({number}/{len(STAGES)}): {COMMANDS[stage].replace('%%', '%')}")
        started = time.monotonic()
        outputs, summary = stages.STAGE_FUNCTIONS[stage](ctx)
        seconds = time.monotonic() - started
        state.finish(stage, outputs, summary, seconds)
        print(f"{stage}: done in {seconds:.0f} s: {summary}")
        print_files(outputs)
    if not todo:
        print(f"nothing to do: every stage of {state.work_dir} has finished")
    if "report" in state.stages:
        print("\n" + state.stages["report"].outputs["rendered"])


def print_status(state) -> None:
    for stage in STAGES:
        record = state.stages.get(stage)
        if record is None:
            print(f"{stage}: not finished")
            continue
        print(f"{stage}: finished {record.finished_at} in {record.seconds:.0f} s: {record.summary}")
        print_files(record.outputs)


def print_files(outputs: dict) -> None:
    """The stage's files (outputs that are paths), one a line."""
    for name, value in outputs.items():
        values = value if isinstance(value, list) else [value]
        if name != "rendered" and all(isinstance(v, str) and "/" in v for v in values):
            for item in values:
                print(f"  {name}: {item}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Alpaca cycle against a running alpaca-serve: fine-tune (sft), publish "
        "as a weight diff (publish), blind comparison (compare), preference training on the "
        "votes (prefer), win rates (report). Resumable: finished stages are recorded in the "
        "work folder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help=f"folder of the stages' files and the state file (default: {DEFAULT_WORK_DIR})",
    )
    common.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    options = common.add_argument_group(
        "settings (remembered in the work folder: a later run needs only the ones it changes)"
    )
    for f in dataclasses.fields(LoopSettings):
        default = f.metadata["default"]
        text = f.metadata["help"].replace("%", "%%")
        if default is not None and f.type != "bool":
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text += f" (default: {shown})"
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            options.add_argument(flag, action="store_true", default=None, help=text)
        elif f.type == "list[Path]":
            options.add_argument(flag, type=Path, nargs="+", default=None, help=text)
        else:
            # A string: LoopSettings' module has `from __future__ import annotations`.
            annotation = cast(str, f.type)
            options.add_argument(flag, type=_option_type(annotation), default=None, help=text)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        commands.add_parser(name, parents=[common], help=text, description=text)
    return parser


def _option_type(annotation: str):
    types = {"int": int, "int | None": int, "float | None": float, "Path": Path}
    return types.get(annotation.removesuffix(" | None"), types.get(annotation, str))


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
