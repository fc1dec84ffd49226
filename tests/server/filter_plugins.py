"""Content filters loaded by import path in the tests, as a user's own filters would be."""

from __future__ import annotations

import asyncio

from alpaca_serve.server.filters import FilterInput, Verdict


class KeywordFilter:
    """Blocks requests that mention `keyword`."""

    name = "keyword"

    def __init__(self, keyword: str, category: str):
        self.keyword = keyword
        self.category = category

    def check_input(self, request: FilterInput) -> Verdict:
        if any(self.keyword in text for text in request.texts):
            return Verdict.block(self.category, f"mentions {self.keyword}")
        return Verdict.allow()


class CrashingFilter:
    """Raises on requests that contain `trigger`: a filter with a bug."""

    def __init__(self, trigger: str):
        self.trigger = trigger

    def check_input(self, request: FilterInput) -> Verdict:
        if any(self.trigger in text for text in request.texts):
            raise RuntimeError("the classifier crashed")
        return Verdict.allow()


class SlowFilter:
    """An async filter that hangs on requests containing `trigger`."""

    def __init__(self, trigger: str):
        self.trigger = trigger

    async def check_input(self, request: FilterInput) -> Verdict:
        if any(self.trigger in text for text in request.texts):
            await asyncio.sleep(30)
        return Verdict.allow()


def keyword(keyword: str, category: str) -> KeywordFilter:
    return KeywordFilter(keyword, category)


def crashing(trigger: str) -> CrashingFilter:
    return CrashingFilter(trigger)


def slow(trigger: str) -> SlowFilter:
    return SlowFilter(trigger)
