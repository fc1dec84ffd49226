"""Stop strings, matched in the server: text waits only while it could still become one.

Usage (server/pipeline.py, one matcher per generation):
    matcher = StopMatcher(["### Instruction:", "END"])
    text, matched = matcher.feed(piece.text)   # what may go to the client now; True: a stop string
    text = matcher.finish()                    # the engine ended without one: the held-back tail

Why not vLLM's own stop strings: vLLM holds back the last (longest stop string - 1) characters
of every stream until it can rule a match out, whatever they are: 15 characters for the Alpaca
headers, which made the first streamed text ~100 ms later (issue #18). This matcher holds back
only a tail that is the beginning of a stop string (a trailing `#`, `### In`) and releases
everything else at once. The engine is given no stop strings; the caller stops it (closing its
stream aborts the request) when `feed` says a stop string matched.

Kept from vLLM (vllm/v1/engine/detokenizer.py, `check_stop_strings`), so answers do not change:
- the answer ends before the stop string, which never reaches the client, nor any part of it
  (vLLM's `include_stop_str_in_output` is off: this API has no such field);
- where several stop strings match, the one that completes first wins; a tie goes to the one
  listed first;
- a match counts only if it ends in text fed with `matchable=True` (vLLM ignores stop strings
  until `min_tokens` tokens are out, and then only matches that end after them).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds the first stop string in text fed piece by piece, holding back only what could
    still be the beginning of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stop for stop in stops if stop)
        self.matched: str | None = None  # the stop string found, once `feed` said so
        self._held = ""  # the tail that is the beginning of a stop string; never holds one

    @property
    def held(self) -> str:
        """Text fed but not yet released."""
        return self._held

    def feed(self, text: str, matchable: bool = True) -> tuple[str, bool]:
        """The text that can go to the client now, and whether a stop string ended the answer.

        On a match the text is the answer up to the stop string, and nothing follows it: feeding
        more after a match is a mistake of the caller."""
        if self.matched is not None:
            raise RuntimeError(f"the answer already ended at the stop string {self.matched!r}")
        pending = self._held + text
        if matchable:
            match = self._first_match(pending, checked=len(self._held))
            if match is not None:
                self.matched, start = match
                self._held = ""
                return pending[:start], True
        cut = len(pending) - self._open_prefix(pending)
        self._held = pending[cut:]
        return pending[:cut], False

    def finish(self) -> str:
        """The held-back tail, once no more text will come: it was not a stop string after all."""
        tail, self._held = self._held, ""
        return tail

    def _first_match(self, text: str, checked: int) -> tuple[str, int] | None:
        """(stop string, where it starts) of the match that completes first, among those that
        end past `checked` (text before it was searched already); None when none does."""
        best: tuple[str, int] | None = None
        best_end = len(text) + 1
        for stop in self.stops:
            start = text.find(stop, max(checked - len(stop) + 1, 0))
            if start != -1 and start + len(stop) < best_end:
                best, best_end = (stop, start), start + len(stop)
        return best

    def _open_prefix(self, text: str) -> int:
        """The length of the longest tail of `text` that begins a stop string (0: none does)."""
        longest = 0
        for stop in self.stops:
            # Tails shorter than the stop string itself, longest first; only those that start
            # with the stop string's first character can begin it.
            first = max(len(text) - len(stop) + 1, 0)
            for start in range(first, len(text) - longest):
                if text[start] == stop[0] and stop.startswith(text[start:]):
                    longest = len(text) - start
                    break
        return longest
