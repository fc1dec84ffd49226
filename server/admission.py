"""Admission control: a cap on requests in the engine and a bounded queue in front of it.

A request past both is refused at once (429 with Retry-After) instead of waiting without end;
the check comes before any tokenization or filtering, so a flood costs the server little.

Usage:
    ticket = admission.admit()     # None when the server is full
    await ticket.acquire()         # wait in the queue for a slot
    ...                            # generate
    ticket.release()               # always, whatever happened
"""

from __future__ import annotations

import asyncio


class Ticket:
    """One admitted request: waiting for a slot, holding one, or done."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._state = "waiting"

    async def acquire(self) -> None:
        await self._admission._slots.acquire()
        self._admission.waiting -= 1
        self._admission.active += 1
        self._state = "active"

    def release(self) -> None:
        if self._state == "waiting":
            self._admission.waiting -= 1
        elif self._state == "active":
            self._admission.active -= 1
            self._admission._slots.release()
        self._state = "done"


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.active = 0  # holding a slot: in the engine
        self.waiting = 0  # admitted, waiting for a slot

    def admit(self) -> Ticket | None:
        """A ticket, or None when the engine and the queue are both full."""
        if self.active + self.waiting >= self.max_concurrent + self.max_queue:
            return None
        self.waiting += 1
        return Ticket(self)
