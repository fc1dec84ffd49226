"""Alpaca records -> token ids with the prompt masked out of the loss, as Stanford's train.py did.

Usage:
    from alpaca_serve.training.tokenization import PadCollator, tokenize_records
    added = add_missing_special_tokens(tokenizer)           # before tokenizing
    resize_embeddings(model, len(tokenizer))                 # after loading the model, if added
    examples, stats = tokenize_records(records, tokenizer, max_length=512)
    batch = PadCollator(tokenizer.pad_token_id)(examples[:4])

Each example is the prompt (the Alpaca template from `alpaca_serve.core.prompts`, with-input
only when `input` is non-empty) followed directly by `output` and the EOS token. Prompt and full
example are tokenized separately; `labels` equal `input_ids` with the prompt's positions set to
-100, so the loss is on the response and EOS only. Examples longer than `max_length` are cut at
the end (and counted); one whose prompt alone fills `max_length` would teach nothing and is
dropped (and counted), never kept with no target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.training.data import AlpacaRecord

IGNORE_INDEX = -100  # labels with this value add nothing to the loss (torch's CrossEntropy default)
DEFAULT_PAD_TOKEN = "[PAD]"
DEFAULT_EOS_TOKEN = "</s>"


@dataclass
class TokenizeStats:
    """What tokenization did to the records; shown before training starts."""

    examples: int = 0  # examples kept
    truncated: int = 0  # kept, but cut at max_length (their EOS, maybe part of the output, lost)
    dropped_no_target: int = 0  # prompt alone reached max_length: nothing left to learn
    tokens: int = 0  # tokens over all kept examples
    target_tokens: int = 0  # of which carry a label (response + EOS)
    dropped_indices: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.examples} examples, {self.tokens} tokens ({self.target_tokens} in responses); "
            f"{self.truncated} truncated, {self.dropped_no_target} dropped with no room left for "
            "the response"
        )


def add_missing_special_tokens(tokenizer: Any, pad_with_existing: bool = False) -> list[str]:
    """Give the tokenizer an EOS and a pad token when it has none (or an empty one).

    Returns the tokens added to the vocabulary; when there are any the model's embeddings must be
    resized with `resize_embeddings`. A tokenizer whose pad token equals its EOS is left alone:
    padding positions are masked in the labels, so EOS is still learned. With
    `pad_with_existing` (LoRA), a missing pad token becomes the EOS (or UNK) token instead of a
    new `[PAD]` row: a new row would put whole embedding matrices into the adapter, which vLLM
    cannot serve unmerged.
    """
    special: dict[str, str] = {}
    if not tokenizer.eos_token:
        special["eos_token"] = DEFAULT_EOS_TOKEN
    if not tokenizer.pad_token:
        existing = tokenizer.eos_token or tokenizer.unk_token
        if pad_with_existing and existing:
            tokenizer.pad_token = existing
        elif pad_with_existing:
            special["pad_token"] = special["eos_token"]  # the one new row serves both
        else:
            special["pad_token"] = DEFAULT_PAD_TOKEN
    if not special:
        return []
    before = len(tokenizer)
    tokenizer.add_special_tokens(special)
    return list(dict.fromkeys(special.values())) if len(tokenizer) > before else []


def resize_embeddings(model: Any, vocab_size: int) -> int:
    """Grow the input and output embeddings to `vocab_size`, new rows = the mean of the old rows.

    Stanford's `smart_tokenizer_and_embedding_resize`; returns the number of rows added.
    """
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    added = vocab_size - old
    if added <= 0:
        return 0
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        inputs = model.get_input_embeddings().weight
        inputs[-added:] = inputs[:-added].mean(dim=0, keepdim=True)
        output_layer = model.get_output_embeddings()
        if output_layer is not None and output_layer.weight is not inputs:
            outputs = output_layer.weight
            outputs[-added:] = outputs[:-added].mean(dim=0, keepdim=True)
    return added


def tokenize_records(
    records: Iterable[AlpacaRecord], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenize records into `{"input_ids", "labels"}` lists, prompt positions labelled -100."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token: call add_missing_special_tokens first")
    stats = TokenizeStats()
    examples = []
    for index, record in enumerate(records):
        prompt = format_prompt(record.instruction, record.input)
        # Two separate tokenizations, as the original: the prompt's length is what gets masked.
        prompt_ids = tokenizer(prompt)["input_ids"]
        input_ids = tokenizer(prompt + record.output)["input_ids"] + [eos_id]
        if len(input_ids) > max_length:
            input_ids = input_ids[:max_length]
            stats.truncated += 1
        prompt_len = min(len(prompt_ids), len(input_ids))
        if prompt_len >= len(input_ids):
            stats.dropped_no_target += 1
            stats.dropped_indices.append(index)
            continue
        labels = [IGNORE_INDEX] * prompt_len + input_ids[prompt_len:]
        examples.append({"input_ids": input_ids, "labels": labels})
        stats.examples += 1
        stats.tokens += len(input_ids)
        stats.target_tokens += len(input_ids) - prompt_len
    return examples, stats


class PadCollator:
    """Right-pads a list of examples into a batch: pad id for inputs, -100 for labels."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        input_ids, labels, attention_mask = [], [], []
        for e in examples:
            padding = longest - len(e["input_ids"])
            input_ids.append(list(e["input_ids"]) + [self.pad_token_id] * padding)
            labels.append(list(e["labels"]) + [IGNORE_INDEX] * padding)
            attention_mask.append([1] * len(e["input_ids"]) + [0] * padding)
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(attention_mask),
        }


class PackCollator:
    """Packs a list of examples into one padding-free row, position ids restarting per example.

    The attention implementation sees the restarts and keeps examples from attending to each
    other (transformers derives a block-diagonal mask from `position_ids` when there is no
    attention mask).
    """

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for e in examples:
            input_ids += e["input_ids"]
            labels += e["labels"]
            position_ids += range(len(e["input_ids"]))
        return {
            "input_ids": torch.tensor([input_ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([position_ids]),
        }
