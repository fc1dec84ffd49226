"""The five stages of the Alpaca cycle, each a function from the work folder's state to outputs.

Usage (alpaca-loop does this; see loop/cli.py):
    ctx = LoopContext(settings, state, progress=True)
    outputs, summary = STAGE_FUNCTIONS["sft"](ctx)
    state.finish("sft", outputs, summary)

- sft: a LoRA fine-tune of the served base on Alpaca records (`alpaca-train --lora --no-merge`,
  the adapter shape of `--recipe alpaca`), copied into the server's adapters folder and served by
  name.
- publish: the adapter merged into the base (a full model folder), a weight diff of it against
  the base (`alpaca-recover make-diff`), a model recovered from the diff into a fresh folder
  (`recover`), and every tensor of the recovered model checked against the merged one.
- compare: the base and the adapter answer the evaluation instructions (`alpaca-eval answer`);
  the answers become blind pairs (`alpaca-eval compare`), a file the demo's Compare tab opens for
  votes; with --auto an automatic judge votes (machine votes, named as such).
- prefer: the votes become DPO pairs (`alpaca-export --format dpo`, machine votes only with
  --auto), a DPO adapter is trained on them (`alpaca-train --method dpo`) and served by name; it
  answers too and is paired with the base and the SFT adapter (judged with --auto). When people
  also gave thumbs up or down (`alpaca-export --format kto`), the adapter is trained with KTO
  instead (`alpaca-train --method kto`) on the thumbs and the votes together, each pair unpaired
  into its preferred answer (desirable) and the other (undesirable): every vote counts.
- report: win rates of each model against the others, by method of judgement, with 95% Wilson
  intervals, as a table and charts (`alpaca-eval report`).

Each stage clears its own folder first (a stage that did not finish left nothing worth keeping)
and raises LoopError, one line, when it cannot go on.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpaca_serve.client.api import AlpacaClient
from alpaca_serve.evaluation.answers import (
    generate_answers,
    load_answers,
    load_instructions,
    write_jsonl,
)
from alpaca_serve.evaluation.comparison import (
    attach_generation_ids,
    build_comparison,
    excluded_in_store,
    judge_comparison,
    save_comparison,
)
from alpaca_serve.evaluation.reference_judge import (
    JUDGE_DESCRIPTION,
    JUDGE_SESSION,
    judge_by_reference,
    reference_answers,
)
from alpaca_serve.evaluation.report import format_exclusions
from alpaca_serve.feedback.records import StoreError
from alpaca_serve.feedback.settings import StoreSettings, database_location
from alpaca_serve.feedback.store import open_store
from alpaca_serve.feedback.training_data import Selection, dpo_pairs, kto_examples
from alpaca_serve.loop.publish import compare_weights, merge_into_base
from alpaca_serve.loop.serving import release_adapter, served_base
from alpaca_serve.loop.settings import LoopSettings
from alpaca_serve.loop.state import LoopState
from alpaca_serve.loop.win_rates import collect_rows, format_table, write_reports
from alpaca_serve.recover.weight_diff import WeightDiffError, make_diff, recover
from alpaca_serve.training.args import (
    AlpacaTrainArgs,
    ArgsError,
    DataArgs,
    DpoArgs,
    LoraArgs,
    TrainArgs,
)
from alpaca_serve.training.cli import fine_tune
from alpaca_serve.training.data import DataFormatError
from alpaca_serve.training.recipe import ALPACA_LORA
from alpaca_serve.training.train import TrainError

MIN_PAIRS_TO_HOLD_OUT = 6  # fewer DPO pairs are all trained on: no held-out measurement


class LoopError(RuntimeError):
    """A stage cannot go on; the message (one line) says why and, where it can, what to do."""


@dataclass
class LoopContext:
    """What every stage works with."""

    settings: LoopSettings
    state: LoopState
    progress: bool = True

    @property
    def work_dir(self) -> Path:
        return self.state.work_dir

    def folder(self, stage: str) -> Path:
        """The stage's own folder, emptied."""
        path = self.work_dir / stage
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def output(self, stage: str, name: str) -> Any:
        """An output an earlier stage recorded."""
        return self.state.stages[stage].outputs[name]

    def server(self):
        return AlpacaClient(self.settings.server_url, self.settings.api_key, timeout_s=60.0)


Stage = Callable[[LoopContext], tuple[dict[str, Any], str]]


# --- sft ----------------------------------------------------------------------------------------


def run_sft(ctx: LoopContext) -> tuple[dict[str, Any], str]:
    """LoRA fine-tune of the served base; the adapter goes live under `sft_name`."""
    settings = ctx.settings
    adapters_dir = _adapters_dir(settings)
    with ctx.server() as server:
        base = served_base(server)
    base_dir = settings.base_model or (Path(base["path"]) if base.get("path") else None)
    if base_dir is None or not (base_dir / "config.json").is_file():
        raise LoopError(
            f"the served base's folder {base_dir} is not readable here: pass --base-model PATH"
        )
    out = ctx.folder("sft")
    files = ", ".join(str(path) for path in settings.data)
    print(f"fine-tuning {base['name']} ({base_dir}) on {files} with LoRA")
    _train(sft_arguments(settings, base_dir, out))
    with ctx.server() as server:
        served = release_adapter(server, out, adapters_dir, settings.sft_name)
    outputs = {
        "base_name": base["name"],
        "base_dir": str(base_dir),
        "train_dir": str(out),
        "adapter_dir": str(out / "adapter"),
        "served_as": settings.sft_name,
        "served_from": str(served.get("path") or adapters_dir / settings.sft_name),
    }
    return outputs, f"adapter {settings.sft_name} served beside {base['name']}"


def sft_arguments(settings: LoopSettings, base_dir: Path, out: Path) -> AlpacaTrainArgs:
    """The supervised fine-tune's `alpaca-train` arguments: the shape of `--recipe alpaca`
    (training/recipe.py), at the loop's sizes."""
    return AlpacaTrainArgs(
        train=_schedule(
            settings, base_dir, out, "sft", settings.sft_steps, settings.sft_learning_rate
        ),
        data=DataArgs(
            data=list(settings.data),
            model_max_length=settings.max_length,
            group_by_length=True,
        ),
        lora=LoraArgs(lora=True, merge=False, **ALPACA_LORA),
        dpo=DpoArgs(),
    )


# --- publish ------------------------------------------------------------------------------------


def run_publish(ctx: LoopContext) -> tuple[dict[str, Any], str]:
    """Merge, make-diff, recover, and check the recovered model against the merged one."""
    base_dir = Path(ctx.output("sft", "base_dir"))
    train_dir = Path(ctx.output("sft", "train_dir"))
    out = ctx.folder("publish")
    merged, diff, recovered = out / "merged", out / "diff", out / "recovered"
    print(f"merging {train_dir / 'adapter'} into {base_dir}")
    merge_into_base(base_dir, train_dir, merged)
    try:
        print(f"making the weight diff {diff} (merged - base)")
        made = make_diff(base_dir, merged, diff, progress=ctx.progress)
        print(f"recovering {recovered} from {diff} and the base")
        recover(base_dir, diff, recovered, progress=ctx.progress)
    except WeightDiffError as err:
        raise LoopError(str(err)) from err
    check = compare_weights(merged, recovered, diff)
    if not check.identical:
        raise LoopError(check.describe())
    outputs = {
        "merged": str(merged),
        "diff": str(diff),
        "recovered": str(recovered),
        "tensors": check.tensors,
        "bit_identical": check.bit_identical,
        "rounded": check.rounded,
        "diff_inexact_tensors": made.inexact_tensors,
    }
    return outputs, f"recovered model: {check.describe()}"


# --- compare ------------------------------------------------------------------------------------


def run_compare(ctx: LoopContext) -> tuple[dict[str, Any], str]:
    """The base and the SFT adapter answer; blind pairs; machine votes with --auto."""
    settings = ctx.settings
    base_name, sft_name = ctx.output("sft", "base_name"), settings.sft_name
    out = ctx.folder("compare")
    items = load_instructions(settings.instructions, settings.limit)
    answers = {
        "base": _answer(ctx, items, base_name, out / "answers-base.jsonl"),
        "sft": _answer(ctx, items, sft_name, out / "answers-sft.jsonl"),
    }
    comparison_file = out / "comparison.json"
    comparison = _pair(ctx, answers["sft"], answers["base"], (sft_name, base_name), comparison_file)
    outputs = {
        "answers_base": str(answers["base"]),
        "answers_sft": str(answers["sft"]),
        "comparison": str(comparison_file),
        "pairs": len(comparison["pairs"]),
    }
    summary = f"{len(comparison['pairs'])} blind pairs {sft_name} vs {base_name}"
    if settings.auto:
        judged = _judge(ctx, comparison)
        outputs["machine_votes"] = judged
        summary += f"; {judged}"
    else:
        print(
            f"vote on the pairs in the demo's Compare tab: ALPACA_DEMO_COMPARISON_FILE="
            f"{comparison_file} alpaca-demo --server-url {settings.server_url} (or "
            f"`alpaca-eval vote --comparison {comparison_file} ...`); then run "
            f"`alpaca-loop run --work-dir {ctx.work_dir}` again"
        )
    return outputs, summary


# --- prefer -------------------------------------------------------------------------------------


def run_prefer(ctx: LoopContext) -> tuple[dict[str, Any], str]:
    """Votes -> DPO pairs -> a DPO adapter, served; it answers and is paired with the others."""
    settings = ctx.settings
    adapters_dir = _adapters_dir(settings)
    out = ctx.folder("prefer")
    prefs = out / "prefs.jsonl"
    pairs, source, method = _export_preferences(ctx, prefs)
    print(f"{prefs}: {source}")
    train_dir = out / "dpo"  # the preference adapter's folder, whichever the method
    _train(
        AlpacaTrainArgs(
            train=_schedule(
                settings,
                Path(ctx.output("sft", "base_dir")),
                train_dir,
                method,
                settings.dpo_steps,
                settings.dpo_learning_rate,
            ),
            data=DataArgs(data=[prefs], model_max_length=settings.max_length),
            lora=LoraArgs(lora=True, merge=False),
            # A tenth of the prompts held out to measure preference accuracy before and after,
            # when there are enough of them to spare one (at least 2 prompts to split).
            dpo=DpoArgs(eval_fraction=0.1 if pairs >= MIN_PAIRS_TO_HOLD_OUT else 0.0),
        )
    )
    with ctx.server() as server:
        release_adapter(server, train_dir, adapters_dir, settings.dpo_name)
    items = load_instructions(settings.instructions, settings.limit)
    dpo_answers = _answer(ctx, items, settings.dpo_name, out / "answers-dpo.jsonl")
    base_name, sft_name = ctx.output("sft", "base_name"), settings.sft_name
    measured = train_dir / "preference_eval.json"
    outputs: dict[str, Any] = {
        "preferences": str(prefs),
        "preference_pairs": pairs,
        "preference_method": method,
        "preference_source": source,
        "train_dir": str(train_dir),
        **({"preference_eval": str(measured)} if measured.is_file() else {}),
        "served_as": settings.dpo_name,
        "answers_dpo": str(dpo_answers),
        "comparisons": [],
    }
    judged = []
    for other, name in (("base", base_name), ("sft", sft_name)):
        file = out / f"comparison-dpo-vs-{other}.json"
        other_answers = Path(ctx.output("compare", f"answers_{other}"))
        comparison = _pair(ctx, dpo_answers, other_answers, (settings.dpo_name, name), file)
        outputs["comparisons"].append(str(file))
        if settings.auto:
            judged.append(_judge(ctx, comparison))
    noun = "pairs" if method == "dpo" else "labelled answers"
    summary = (
        f"{method.upper()} adapter {settings.dpo_name} served, trained on {pairs} {noun} ({source})"
    )
    return outputs, summary + (f"; {'; '.join(judged)}" if judged else "")


def _export_preferences(ctx: LoopContext, path: Path) -> tuple[int, str, str]:
    """Write the store's votes as DPO pairs (machine votes only with --auto), or, when people
    gave thumbs too, the thumbs and the votes unpaired as KTO's labelled answers; returns how
    many records, where they came from in words, and the method ("dpo" or "kto")."""
    settings = ctx.settings
    url, data_dir = database_location(settings.database, settings.data_dir, StoreSettings())
    if data_dir is not None and not (data_dir / "alpaca.sqlite3").is_file():
        raise LoopError(
            f"no feedback store at {data_dir / 'alpaca.sqlite3'}: pass --data-dir (the server's "
            "ALPACA_DATA_DIR) or --database URL"
        )
    try:
        with open_store(url) as store:
            people = dpo_pairs(store, include_machine=False)
            chosen = dpo_pairs(store, include_machine=True) if settings.auto else people
            thumbs = kto_examples(store)
    except (StoreError, ValueError) as err:
        raise LoopError(f"feedback store {data_dir or 'at --database'}: {err}") from err
    machine = len(chosen.records) - len(people.records)
    votes = f"{len(people.records)} from human votes"
    if settings.auto:
        votes += f", {machine} from MACHINE votes (automatic judge)"
    if thumbs.records:
        answers = unpaired_with_thumbs(chosen, thumbs)
        write_jsonl(path, answers)
        return (
            len(answers),
            f"{len(thumbs.records)} from thumbs ({thumbs.summary()}), "
            f"{len(answers) - len(thumbs.records)} more from {len(chosen.records)} pairs "
            f"({votes}; {chosen.summary()})",
            "kto",
        )
    if not chosen.records:
        comparison = ctx.output("compare", "comparison")
        raise LoopError(
            f"no preference pair in the feedback store ({chosen.summary()}): "
            + (
                "the judge decided no pair"
                if settings.auto
                else f"vote on the pairs of {comparison} in the demo's Compare tab, or run with "
                "--auto for machine votes"
            )
        )
    write_jsonl(path, chosen.records)
    return len(chosen.records), votes + f"; {chosen.summary()}", "dpo"


def unpaired_with_thumbs(pairs: Selection, thumbs: Selection) -> list[dict]:
    """KTO's labelled answers: the thumbs, then each pair's preferred answer (desirable) and the
    other (undesirable). An answer is written once: one that was rated keeps its thumbs' label
    (a preferred response's pair over the answer it corrects is in the thumbs already)."""
    answers = list(thumbs.records)
    seen = {(row["prompt"], row["completion"]) for row in answers}
    for pair in pairs.records:
        for completion, label in ((pair["chosen"], True), (pair["rejected"], False)):
            if (pair["prompt"], completion) not in seen:
                seen.add((pair["prompt"], completion))
                answers.append({"prompt": pair["prompt"], "completion": completion, "label": label})
    return answers


# --- report -------------------------------------------------------------------------------------


def run_report(ctx: LoopContext) -> tuple[dict[str, Any], str]:
    """Win rates of every pairing, by method of judgement, as a table, a text report and charts."""
    import json

    files = [Path(ctx.output("compare", "comparison"))]
    if ctx.state.is_done("prefer"):
        files += [Path(f) for f in ctx.output("prefer", "comparisons")]
    else:
        print("prefer has not finished: the report covers the compare stage's pairs only")
    out = ctx.folder("report")
    with ctx.server() as store:
        rows, details = collect_rows(files, store)
        excluded = format_exclusions(*excluded_in_store(store))
    charts = write_reports(details, out)
    table = format_table(rows) + (f"\n{excluded}" if excluded else "")
    (out / "report.txt").write_text(table + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    outputs = {
        "table": str(out / "report.txt"),
        "json": str(out / "report.json"),
        "details": str(out / "details.txt"),
        "charts": [str(c) for c in charts],
        "rendered": table,
    }
    return outputs, f"{len(rows)} rows of win rates"


# --- shared steps -------------------------------------------------------------------------------


def _adapters_dir(settings: LoopSettings) -> Path:
    if settings.adapters_dir is None:
        raise LoopError(
            "--adapters-dir is needed: the server's adapters folder (ALPACA_ADAPTERS_DIR), where "
            "the trained adapter is copied to go live"
        )
    return settings.adapters_dir


def _schedule(
    settings: LoopSettings,
    model: Path,
    out: Path,
    method: str,
    steps: int,
    learning_rate: float | None,
) -> TrainArgs:
    """The model, output and schedule of both fine-tunes (the tiny preset, a few steps)."""
    return TrainArgs(
        model=model,
        output_dir=out,
        method=method,
        preset="tiny",
        learning_rate=learning_rate,
        max_steps=steps,
        global_batch_size=settings.batch_size,
        micro_batch_size=min(settings.batch_size, 4),
        logging_steps=max(1, steps // 4),
        save_steps=steps,
        seed=settings.seed,
    )


def _train(args: AlpacaTrainArgs) -> None:
    """One `alpaca-train` run in this process; its progress bar and log lines show as they come."""
    started = time.monotonic()
    try:
        fine_tune(args)
    except (ArgsError, DataFormatError, TrainError) as err:
        raise LoopError(f"alpaca-train --method {args.train.method}: {err}") from err
    print(f"alpaca-train finished in {time.monotonic() - started:.0f} s")


def _answer(ctx: LoopContext, items: list[dict], model: str, path: Path) -> Path:
    """`model` answers `items` (greedy); the answers file."""
    settings = ctx.settings
    print(f"{model} answers {len(items)} instructions of {settings.instructions.name}")
    answers, failures = generate_answers(
        settings.server_url,
        items,
        model=model,
        concurrency=settings.concurrency,
        max_new_tokens=settings.max_new_tokens,
        temperature=0.0,
        api_key=settings.api_key,
        progress=ctx.progress,
    )
    if failures:
        raise LoopError(
            f"{model} did not answer {len(failures)} instructions: {failures[0].reason}"
        )
    write_jsonl(path, answers)
    return path


def _pair(
    ctx: LoopContext, a: Path, b: Path, labels: tuple[str, str], path: Path
) -> dict[str, Any]:
    """Blind pairs of answer files `a` and `b`, saved at `path` with the server's generation ids."""
    comparison = build_comparison(load_answers(a), load_answers(b), *labels, ctx.settings.seed)
    with ctx.server() as store:
        attach_generation_ids(comparison, store)
    save_comparison(path, comparison)
    print(f"{path}: {len(comparison['pairs'])} blind pairs, {labels[0]} vs {labels[1]}")
    return comparison


def _judge(ctx: LoopContext, comparison: dict[str, Any]) -> str:
    """Machine votes on every pair of `comparison`, cast in the store; what was cast, in words."""
    settings = ctx.settings
    pairs = " vs ".join(comparison["labels"])
    if settings.judge_url is not None:
        judgement = judge_comparison(
            comparison,
            settings.judge_url,
            settings.server_url,
            model=settings.judge_model,
            api_key=settings.judge_api_key,
            store_api_key=settings.api_key,
            rejudge=True,
            progress=ctx.progress,
        )
        return (
            f"{len(judgement.votes)} MACHINE votes on {pairs} by judge-{judgement.model} "
            f"(an automatic judge, not people)"
        )
    references = reference_answers(settings.instructions)
    with ctx.server() as store:
        votes, unjudged = judge_by_reference(comparison, references, store, ctx.progress)
    text = (
        f"{len(votes)} MACHINE votes on {pairs} by {JUDGE_SESSION} ({JUDGE_DESCRIPTION}; "
        "not people)"
    )
    return text + (f"; {len(unjudged)} pairs without a reference answer" if unjudged else "")


STAGE_FUNCTIONS: dict[str, Stage] = {
    "sft": run_sft,
    "publish": run_publish,
    "compare": run_compare,
    "prefer": run_prefer,
    "report": run_report,
}
