"""Admission control: a cap on requests in the engine and a bounded queue in front of it.

A request past both is refused at once (429 with Retry-After) instead of waiting without end;
the check comes before any tokenization or filtering, so a flood costs the server little.

Usage:
    ticket = admission.admit()     # None when the server is full
    await ticket.acquire()         # wait in the queue for a slot
    ...                            # generate
    ticket.release()               # always, whatever happened

A request for several answers (OpenAI's `n`) takes one ticket per answer, admitted together
(`admit(n)`) and given their slots together (`acquire_all`), so two such requests never hold
part of their slots each while waiting for the rest.
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

        self._group_lock = asyncio.Lock()  # one group of tickets takes its slots at a time

    def admit(self) -> Ticket | None:
        """A ticket, or None when the engine and the queue are both full."""
        tickets = self.admit_group(1)
        return tickets[0] if tickets else None

    def admit_group(self, count: int) -> list[Ticket] | None:
        """`count` tickets, or None when they do not all fit in the engine and the queue."""
        if self.active + self.waiting + count > self.max_concurrent + self.max_queue:
            return None
        self.waiting += count
        return [Ticket(self) for _ in range(count)]

    async def acquire_all(self, tickets: list[Ticket]) -> None:
        """Wait until every ticket of a group holds a slot (count <= max_concurrent).

        Groups take their slots one group at a time: a group waiting for its last slots holds
        the others, but it waits only for single requests and the group before it, which all
        end, so no two groups can wait on each other."""
        if len(tickets) == 1:
            await tickets[0].acquire()
            return
        async with self._group_lock:
            for ticket in tickets:
                await ticket.acquire()
