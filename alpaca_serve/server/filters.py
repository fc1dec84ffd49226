"""Content filters: hooks that see a request before the engine, and the answer as it is written.

A filter is any object with one or both of these methods (plain or `async`):

    check_input(request: FilterInput) -> Verdict    # before anything reaches the engine
    check_output(text_so_far: str) -> Verdict       # on the answer so far, after each new piece

Filters are named in settings by import path, `package.module:factory`, and built by calling the
factory with the configured options as keyword arguments:

    ALPACA_FILTERS='[{"factory": "mypkg.moderation:build", "options": {"threshold": 0.8}}]'
    ALPACA_BLOCKLIST=/etc/alpaca/blocklist.txt      # the built-in blocklist filter

A filter that raises, or whose async hook runs past its `timeout_s`, blocks the request (fails
closed) unless its entry says `"fail_open": true`; either way the failure is logged and counted.
Sync hooks run on the event loop and must be quick; a slow check (a classifier model) should be an
`async` hook that awaits its work, e.g. with `asyncio.to_thread`. See docs/filters.md.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpaca_serve.server.settings import FilterSettings

log = logging.getLogger("alpaca.filters")

FILTER_ERROR_CATEGORY = "filter_error"


@dataclass(frozen=True)
class Verdict:
    """A filter's answer: allow, or block with a category and a reason.

    The category and the reason reach the client; `detail` (what exactly matched) is for the
    operator alone: it goes to the generation log, never into a response, so that a client
    cannot map the blocklist by probing it."""

    allowed: bool
    category: str | None = None
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def allow(cls) -> Verdict:
        return cls(True)

    @classmethod
    def block(cls, category: str, reason: str, detail: str | None = None) -> Verdict:
        return cls(False, category, reason, detail)


@dataclass(frozen=True)
class FilterInput:
    """What `check_input` sees: the request's text, and the full prompt built from it."""

    instruction: str | None
    input: str
    prompt: str

    @property
    def texts(self) -> list[str]:
        return [text for text in (self.instruction, self.input, self.prompt) if text]


class FilterConfigError(ValueError):
    """A filter could not be built from its settings; the message says which and why."""


# --- the built-in filters -------------------------------------------------------------------

_CATEGORY_PREFIX = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.*)$")
_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class BlocklistEntry:
    category: str
    text: str  # the phrase or pattern as written
    regex: re.Pattern[str]


def parse_blocklist(text: str, source: str = "blocklist") -> list[BlocklistEntry]:
    """Parse blocklist lines: `phrase`, `category: phrase` or `category: re:pattern`.

    `#` at the start of a line, or after white space, starts a comment. Phrases match whole words,
    ignoring case; patterns are Python regular expressions, matched as written.
    """
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        category, body = "blocklist", line
        match = _CATEGORY_PREFIX.match(line)
        if match:
            category, body = match.group(1), match.group(2).strip()
        if not body:
            raise FilterConfigError(f"{source}:{number}: entry has a category but no phrase")
        if body.startswith("re:"):
            pattern = body[3:]
            try:
                regex = re.compile(pattern)
            except re.error as err:
                message = f"{source}:{number}: bad pattern {pattern!r}: {err}"
                raise FilterConfigError(message) from err
        else:
            words = r"\s+".join(re.escape(word) for word in body.split())
            regex = re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)
        entries.append(BlocklistEntry(category, body, regex))
    return entries


def _phrase_trie_regex(phrases: list[str]) -> re.Pattern[str] | None:
    """One regex that matches wherever any of `phrases` matches as a blocklist phrase (whole
    words, any white space between them, ignoring case), built from a trie of their characters so
    that a thousand phrases cost about as much as one: at each position of the text it follows one
    path of the trie instead of trying every phrase in turn."""
    end = ""  # the key marking "a phrase ends here"; no phrase character is empty
    root: dict = {}
    for phrase in phrases:
        node = root
        # Words joined by one space, which the regex renders as \s+ (words have no space).
        for char in " ".join(phrase.split()):
            node = node.setdefault(char, {})
        node[end] = {}
    if not root:
        return None

    def render(node: dict) -> str:
        out = []
        # Walk a chain of single children without recursing, so a long phrase costs no depth.
        while len(node) == 1 and end not in node:
            ((char, node),) = node.items()
            out.append(r"\s+" if char == " " else re.escape(char))
        branches = [
            (r"\s+" if char == " " else re.escape(char)) + render(child)
            for char, child in sorted(node.items())
            if char != end
        ]
        if branches:
            body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
            out.append(f"(?:{body})?" if end in node else body)
        return "".join(out)

    return re.compile(rf"(?<!\w)(?:{render(root)})(?!\w)", re.IGNORECASE)


BLOCKLIST_REASON = "it matched the server's blocklist"  # which entry: the log's detail only


class BlocklistFilter:
    """Blocks text that contains a listed phrase or pattern; the file is re-read when it changes."""

    name = "blocklist"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._mtime: float | None = None
        self.entries = self._load()

    def _load(self) -> list[BlocklistEntry]:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as err:
            raise FilterConfigError(f"cannot read blocklist {self.path}: {err.strerror}") from err
        entries = parse_blocklist(text, str(self.path))
        self._mtime = stat.st_mtime
        # A quick first pass: phrases through one trie-built regex, patterns one by one. Only
        # when it finds something are the entries searched in their order, for the verdict.
        phrases = [entry.text for entry in entries if not entry.text.startswith("re:")]
        try:
            self._phrases = _phrase_trie_regex(phrases)
            self._patterns = [entry.regex for entry in entries if entry.text.startswith("re:")]
        except (RecursionError, re.error, OverflowError):  # a trie too deep for the regex
            self._phrases, self._patterns = None, [entry.regex for entry in entries]
        return entries

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            try:
                self.entries = self._load()
                log.info("blocklist %s reloaded: %d entries", self.path, len(self.entries))
            except FilterConfigError as err:
                self._mtime = mtime
                log.error("blocklist not reloaded, keeping the previous one: %s", err)

    def _might_match(self, texts: list[str]) -> bool:
        for text in texts:
            if self._phrases is not None and self._phrases.search(text):
                return True
            if any(pattern.search(text) for pattern in self._patterns):
                return True
        return False

    def _check(self, texts: list[str]) -> Verdict:
        self._reload_if_changed()
        if not self._might_match(texts):
            return Verdict.allow()
        for entry in self.entries:
            for text in texts:
                if entry.regex.search(text):
                    return Verdict.block(
                        entry.category, BLOCKLIST_REASON, f"blocklist entry {entry.text!r}"
                    )
        return Verdict.allow()

    def check_input(self, request: FilterInput) -> Verdict:
        return self._check(request.texts)

    def check_output(self, text_so_far: str) -> Verdict:
        return self._check([text_so_far])


class LengthRepetitionGuard:
    """Blocks over-long inputs and answers stuck repeating the same words."""

    name = "length_repetition_guard"

    def __init__(self, max_input_chars: int = 20_000, max_repeats: int = 8, max_ngram: int = 8):
        if max_input_chars < 1 or max_repeats < 2 or max_ngram < 1:
            raise FilterConfigError(
                "length_repetition_guard needs max_input_chars >= 1, max_repeats >= 2, "
                "max_ngram >= 1"
            )
        self.max_input_chars = max_input_chars
        self.max_repeats = max_repeats
        self.max_ngram = max_ngram

    def check_input(self, request: FilterInput) -> Verdict:
        if request.instruction is None:
            size = len(request.prompt)
        else:
            size = len(request.instruction) + len(request.input)
        if size > self.max_input_chars:
            return Verdict.block(
                "length", f"input is {size} characters, above the limit of {self.max_input_chars}"
            )
        return Verdict.allow()

    def check_output(self, text_so_far: str) -> Verdict:
        words = text_so_far.split()
        for n in range(1, self.max_ngram + 1):
            span = n * self.max_repeats
            if len(words) < span:
                break
            tail = words[-span:]
            if all(tail[i] == tail[i % n] for i in range(span)):
                return Verdict.block(
                    "repetition",
                    f"the answer repeats the same {n} word(s) {self.max_repeats} times in a row",
                )
        return Verdict.allow()


def blocklist(path: str) -> BlocklistFilter:
    """Factory of the built-in blocklist filter (`alpaca_serve.server.filters:blocklist`)."""
    return BlocklistFilter(path)


def length_repetition_guard(**options: Any) -> LengthRepetitionGuard:
    """Factory of the built-in guard (`alpaca_serve.server.filters:length_repetition_guard`)."""
    return LengthRepetitionGuard(**options)


# --- loading and running --------------------------------------------------------------------


@dataclass
class LoadedFilter:
    name: str
    impl: Any
    fail_open: bool
    timeout_s: float


def load_filter(spec: FilterSettings) -> LoadedFilter:
    """Import `spec.factory` and call it with `spec.options`."""
    module_name, _, attr = spec.factory.partition(":")
    if not module_name or not attr:
        raise FilterConfigError(f"filter factory {spec.factory!r} is not 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise FilterConfigError(f"cannot import filter factory {spec.factory!r}: {err}") from err
    try:
        impl = factory(**spec.options)
    except FilterConfigError:
        raise
    except Exception as err:
        raise FilterConfigError(f"filter factory {spec.factory!r} failed: {err}") from err
    if not (hasattr(impl, "check_input") or hasattr(impl, "check_output")):
        raise FilterConfigError(f"filter {spec.factory!r} has neither check_input nor check_output")
    name = spec.name or getattr(impl, "name", None) or attr
    return LoadedFilter(name, impl, spec.fail_open, spec.timeout_s)


@dataclass(frozen=True)
class FilterOutcome:
    """A verdict with where it came from, as recorded in the generation log."""

    filter: str
    hook: str
    verdict: Verdict
    failed: bool = False

    def as_record(self) -> dict[str, Any]:
        return {
            "filter": self.filter,
            "hook": self.hook,
            "allowed": self.verdict.allowed,
            "category": self.verdict.category,
            "reason": self.verdict.reason,
            "detail": self.verdict.detail,
            "failed": self.failed,
        }


class FilterChain:
    """Runs the configured filters in order; the first block wins."""

    def __init__(self, filters: list[LoadedFilter], on_block=None, on_failure=None):
        self.filters = filters
        self._on_block = on_block or (lambda hook, category: None)
        self._on_failure = on_failure or (lambda name, hook, kind: None)

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def check_input(self, request: FilterInput) -> tuple[Verdict, list[FilterOutcome]]:
        return await self._run("check_input", request)

    async def check_output(self, text_so_far: str) -> tuple[Verdict, list[FilterOutcome]]:
        return await self._run("check_output", text_so_far)

    async def _run(self, hook: str, argument: Any) -> tuple[Verdict, list[FilterOutcome]]:
        outcomes = []
        for loaded in self.filters:
            method = getattr(loaded.impl, hook, None)
            if method is None:
                continue
            outcome = await self._call(loaded, hook, method, argument)
            outcomes.append(outcome)
            if not outcome.verdict.allowed:
                self._on_block(hook.removeprefix("check_"), outcome.verdict.category or "unknown")
                return outcome.verdict, outcomes
        return Verdict.allow(), outcomes

    async def _call(self, loaded: LoadedFilter, hook: str, method, argument) -> FilterOutcome:
        short_hook = hook.removeprefix("check_")
        try:
            result = method(argument)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, loaded.timeout_s)
            if not isinstance(result, Verdict):
                raise TypeError(f"returned {type(result).__name__}, not a Verdict")
            return FilterOutcome(loaded.name, short_hook, result)
        except asyncio.TimeoutError:
            kind, detail = "timeout", f"took longer than {loaded.timeout_s:g}s"
        except Exception as err:
            kind, detail = "error", f"{type(err).__name__}: {err}"
            log.exception("filter %s failed in %s", loaded.name, hook)
        self._on_failure(loaded.name, short_hook, kind)
        log.warning(
            "filter %s %s in %s (%s)",
            loaded.name,
            kind,
            hook,
            "allowing: fail_open" if loaded.fail_open else "blocking",
        )
        if loaded.fail_open:
            return FilterOutcome(loaded.name, short_hook, Verdict.allow(), failed=True)
        verdict = Verdict.block(FILTER_ERROR_CATEGORY, f"filter {loaded.name} failed: {detail}")
        return FilterOutcome(loaded.name, short_hook, verdict, failed=True)


def build_filter_chain(
    specs: list[FilterSettings], blocklist_path: Path | None, on_block=None, on_failure=None
) -> FilterChain:
    """Load every configured filter; the blocklist (if set) runs first."""
    loaded = []
    if blocklist_path is not None:
        loaded.append(LoadedFilter("blocklist", BlocklistFilter(blocklist_path), False, 2.0))
    loaded.extend(load_filter(spec) for spec in specs)
    return FilterChain(loaded, on_block, on_failure)
