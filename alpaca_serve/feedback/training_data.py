"""Training data chosen from feedback: supervised records (SFT), preference pairs (DPO) and
answers labelled good or bad (KTO).

Usage:
    from alpaca_serve.feedback import open_store
    from alpaca_serve.feedback.training_data import dpo_pairs, sft_records
    with open_store(url) as store:
        sft = sft_records(store)                          # a Selection
        dpo = dpo_pairs(store, include_machine=False)
        kto = kto_examples(store)
    sft.records        # [{"instruction", "input", "output"}, ...], as training.data reads them
    dpo.records        # [{"prompt", "chosen", "rejected"}, ...]
    kto.records        # [{"prompt", "completion", "label"}, ...], label True: desirable
    sft.summary()      # "5 answers rated up, 2 preferred responses; dropped: 3 answers rated down"
    alpaca-export --format sft --out sft.jsonl            # the same, as a command

What is kept:
- SFT: each answer its raters rated up more often than down (once, however many raters), and
  every preferred response a rater wrote, as the output for that answer's instruction and input.
  An answer anyone flagged (harmful, incorrect, other) is never a target: left out and counted.
- KTO: each answer rated (the thumbs), once: desirable when its raters rated it up more often
  than down, undesirable when down more often, left out when evenly; and every preferred response
  a rater wrote, desirable. The prompt is the text the engine received, as for DPO. A flagged
  answer is left out (its preferred responses stay), as is an empty one. Ratings are people's:
  the automatic judge only votes on pairs.
- DPO: each pair of answers that people compared, the winner chosen and the loser rejected; and
  each preferred response, chosen over the answer it corrects. The prompt is the text the server
  sent to the engine, as the generation log recorded it (the Alpaca template, training/prompts.py).
  Several votes on one pair are resolved by majority (tie and "both bad" are outcomes too); a pair
  whose votes split evenly between two outcomes is left out, as are pairs decided a tie or both
  bad. Votes of an automatic judge (voter "machine") count only with `include_machine`.
Generations sent as raw prompts are never used: they have no instruction. Nor are generations
purged by retention (`FeedbackStore.purge_generations`): their text is gone, so they are left out
and counted (a rated answer, or a pair with such an answer). The ratings and votes of excluded
sessions (`alpaca-export --exclude-session`) are left out and counted, each rating and each vote.
Identical records are written once. Everything left out is counted, by reason, in
`Selection.dropped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from alpaca_serve.feedback.store import FeedbackStore

# Why a record was kept or left out: the key counted, and how a count of it reads (one, many).
REASONS = {
    "rated_up": ("answer rated up", "answers rated up"),
    "unanimous": ("unanimous vote", "unanimous votes"),
    "majority": ("conflict resolved by majority", "conflicts resolved by majority"),
    "preferred_response": ("preferred response", "preferred responses"),
    "desirable": ("answer rated up (desirable)", "answers rated up (desirable)"),
    "undesirable": ("answer rated down (undesirable)", "answers rated down (undesirable)"),
    "rated_down": ("answer rated down", "answers rated down"),
    "flagged": ("flagged answer", "flagged answers"),
    "rated_evenly": ("answer rated up and down equally", "answers rated up and down equally"),
    "tie": ("tie", "ties"),
    "both_bad": ("both bad", "both bad"),
    "machine": ("machine vote", "machine votes"),
    "even_split": ("conflict unresolved (even split)", "conflicts unresolved (even split)"),
    "raw_prompt": ("pair with a raw prompt", "pairs with a raw prompt"),
    "different_prompts": ("pair with different prompts", "pairs with different prompts"),
    "same_text": ("pair of identical answers", "pairs of identical answers"),
    "empty_answer": ("pair with an empty answer", "pairs with an empty answer"),
    "empty_completion": ("empty answer", "empty answers"),
    "purged": ("rated answer purged by retention", "rated answers purged by retention"),
    "purged_pair": (
        "pair with an answer purged by retention",
        "pairs with an answer purged by retention",
    ),
    "excluded_rating": ("rating from an excluded session", "ratings from excluded sessions"),
    "excluded_vote": ("vote from an excluded session", "votes from excluded sessions"),
    "duplicate": ("duplicate", "duplicates"),
}


@dataclass
class Selection:
    """Records chosen for training, and how many were kept and left out, by reason."""

    records: list[dict] = field(default_factory=list)
    kept: Counter = field(default_factory=Counter)  # reason -> records kept for it
    dropped: Counter = field(default_factory=Counter)  # reason -> records (or votes) left out
    _seen: set = field(default_factory=set, repr=False)

    def add(self, record: dict, reason: str) -> None:
        """Keep `record` for `reason`, unless an identical one is already kept."""
        key = tuple(record.values())
        if key in self._seen:
            self.dropped["duplicate"] += 1
            return
        self._seen.add(key)
        self.records.append(record)
        self.kept[reason] += 1

    def summary(self) -> str:
        """What was kept and dropped, by reason, in one line: "5 answers rated up; dropped: ..."."""
        kept = _counts(self.kept) or "nothing"
        dropped = _counts(self.dropped)
        return f"{kept}; dropped: {dropped}" if dropped else kept


def sft_records(store: FeedbackStore) -> Selection:
    """Answers rated up (more ups than downs) and preferred responses, as Alpaca records
    `{instruction, input, output}`, oldest generation first."""
    selection = Selection()
    for generation, ratings in _rated_generations(store, selection.dropped):
        record = {"instruction": generation["instruction"], "input": generation["input"]}
        ups = sum(row["rating"] == "up" for row in ratings)
        downs = sum(row["rating"] == "down" for row in ratings)
        if ups > downs and _flagged(ratings):
            selection.dropped["flagged"] += 1
        elif ups > downs:
            selection.add({**record, "output": generation["output"]}, "rated_up")
        else:
            selection.dropped["rated_down" if downs > ups else "rated_evenly"] += 1
        for preferred in _preferred_responses(ratings):
            selection.add({**record, "output": preferred}, "preferred_response")
    return selection


def dpo_pairs(store: FeedbackStore, include_machine: bool = False) -> Selection:
    """Preference pairs `{prompt, chosen, rejected}`: people's pairwise votes (and the judge's,
    with `include_machine`), resolved by majority per pair, in the order of each pair's first
    vote; then preferred responses over the answers they correct, oldest generation first."""
    selection = Selection()
    winners = _votes_by_pair(store, include_machine, selection.dropped)
    generations = store.generations_by_id([i for pair in winners for i in pair])
    for pair, votes in winners.items():
        tally = Counter(votes).most_common()
        if len(tally) > 1 and tally[0][1] == tally[1][1]:
            selection.dropped["even_split"] += 1
            continue
        outcome = tally[0][0]
        if outcome in ("tie", "both_bad"):
            selection.dropped[outcome] += 1
            continue
        chosen = generations[outcome]
        rejected = generations[pair[1] if outcome == pair[0] else pair[0]]
        if chosen["purged_at"] is not None or rejected["purged_at"] is not None:
            selection.dropped["purged_pair"] += 1
        elif chosen["instruction"] is None or rejected["instruction"] is None:
            selection.dropped["raw_prompt"] += 1
        elif chosen["prompt"] != rejected["prompt"]:
            selection.dropped["different_prompts"] += 1
        elif chosen["response"] == rejected["response"]:
            selection.dropped["same_text"] += 1
        elif not chosen["response"].strip() or not rejected["response"].strip():
            # An empty answer (a model that said nothing at once) is no text to train on.
            selection.dropped["empty_answer"] += 1
        else:
            record = {
                "prompt": chosen["prompt"],
                "chosen": chosen["response"],
                "rejected": rejected["response"],
            }
            selection.add(record, "unanimous" if len(tally) == 1 else "majority")
    for generation, ratings in _rated_generations(store, selection.dropped):
        for preferred in _preferred_responses(ratings):
            if preferred == generation["output"]:
                selection.dropped["same_text"] += 1
                continue
            if not generation["output"].strip():
                selection.dropped["empty_answer"] += 1
                continue
            record = {
                "prompt": generation["prompt"],
                "chosen": preferred,
                "rejected": generation["output"],
            }
            selection.add(record, "preferred_response")
    return selection


def kto_examples(store: FeedbackStore) -> Selection:
    """Answers labelled desirable or undesirable `{prompt, completion, label}`: each rated answer
    by the majority of its thumbs, and each preferred response as desirable, oldest generation
    first."""
    selection = Selection()
    for generation, ratings in _rated_generations(store, selection.dropped):
        prompt = generation["prompt"]
        ups = sum(row["rating"] == "up" for row in ratings)
        downs = sum(row["rating"] == "down" for row in ratings)
        if _flagged(ratings):
            selection.dropped["flagged"] += 1
        elif ups == downs:
            selection.dropped["rated_evenly"] += 1
        elif not generation["output"].strip():
            selection.dropped["empty_completion"] += 1
        else:
            desirable = ups > downs
            record = {"prompt": prompt, "completion": generation["output"], "label": desirable}
            selection.add(record, "desirable" if desirable else "undesirable")
        for preferred in _preferred_responses(ratings):
            record = {"prompt": prompt, "completion": preferred, "label": True}
            selection.add(record, "preferred_response")
    return selection


def _flagged(ratings: list[dict]) -> bool:
    """Whether any rater flagged the answer (harmful, incorrect, other)."""
    return any(row["flag"] for row in ratings)


def _rated_generations(store: FeedbackStore, dropped: Counter) -> Iterator[tuple[dict, list[dict]]]:
    """Each rated instruction generation (an export row) with all its ratings' rows; those
    purged by retention, and the ratings of excluded sessions, are left out and counted in
    `dropped`."""
    current: list[dict] = []
    for row in store.export_rows(skipped=dropped):
        if current and row["generation_id"] != current[0]["generation_id"]:
            yield current[0], current
            current = []
        current.append(row)
    if current:
        yield current[0], current


def _preferred_responses(ratings: list[dict]) -> list[str]:
    """The non-blank preferred responses written on one generation, in rating order (the same
    text twice stays twice: `Selection.add` counts the second as a duplicate)."""
    written = (row["preferred_response"] for row in ratings)
    return [text for text in written if text and text.strip()]


def _votes_by_pair(
    store: FeedbackStore, include_machine: bool, dropped: Counter
) -> dict[tuple[str, str], list[str]]:
    """The winner of every vote counted, by pair (its two generation ids, sorted), in the order
    of each pair's first vote; votes of excluded sessions and machine votes left out are counted
    in `dropped`."""
    votes: dict[tuple[str, str], list[str]] = {}
    after = 0
    while True:
        page = store.list_comparisons(after=after, include_excluded=True)
        for row in page:
            if row["excluded"]:
                dropped["excluded_vote"] += 1
                continue
            if row["voter"] == "machine" and not include_machine:
                dropped["machine"] += 1
                continue
            votes.setdefault(tuple(row["generation_ids"]), []).append(row["winner"])
        if not page:
            return votes
        after = page[-1]["id"]


def _counts(counter: Counter) -> str:
    """ "3 ties, 1 both bad": the non-zero counts, in the order of REASONS."""
    return ", ".join(
        f"{counter[reason]} {one if counter[reason] == 1 else many}"
        for reason, (one, many) in REASONS.items()
        if counter[reason]
    )
