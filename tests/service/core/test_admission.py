"""Admission: slots, the queue, and the estimated wait that bounds it (no HTTP, no model)."""

from __future__ import annotations

import asyncio

import pytest

from service.core.admission import AdmissionGate
from service.exceptions import OverloadedError


class Holders:
    """Requests that take a slot (or a place in the queue) and keep it until `release`."""

    def __init__(self, gate: AdmissionGate) -> None:
        self.gate = gate
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, seconds: float) -> None:
        """One more request of `seconds` of estimated work, once it holds a slot or waits."""

        async def hold() -> None:
            async with self.gate.slot(seconds):
                await self.done.wait()

        self.tasks.append(asyncio.create_task(hold()))
        await asyncio.sleep(0)

    async def release(self) -> None:
        self.done.set()
        await asyncio.gather(*self.tasks)


def test_the_wait_is_the_work_left_before_a_request_shared_by_the_slots() -> None:
    async def scenario() -> list[float]:
        gate = AdmissionGate(max_concurrency=2, max_queue=8)
        holders = Holders(gate)
        waits = [gate.estimated_wait()]
        await holders.add(30)
        await holders.add(50)
        waits.append(gate.estimated_wait())  # both slots busy
        await holders.add(20)  # queued
        waits.append(gate.estimated_wait())
        await holders.release()
        return waits

    free, running, queued = asyncio.run(scenario())
    assert free == 0
    assert running == pytest.approx((30 + 50) / 2, abs=0.5)
    assert queued == pytest.approx((30 + 50 + 20) / 2, abs=0.5)


def test_a_wait_past_max_wait_is_refused_with_when_it_would_not_be() -> None:
    async def scenario() -> OverloadedError:
        gate = AdmissionGate(max_concurrency=1, max_queue=8)
        holders = Holders(gate)
        await holders.add(30)  # running
        await holders.add(30)  # queued: 60 s of work before the next request
        with pytest.raises(OverloadedError) as refused:
            async with gate.slot(5, max_wait=40):
                pass
        assert gate.waiting == 1, "the refused request never joined the queue"
        await holders.release()
        return refused.value

    refusal = asyncio.run(scenario())
    assert refusal.retry_after_seconds == 20
    assert "estimated wait for a free slot is 60 s" in refusal.detail


def test_a_wait_within_max_wait_queues_and_a_free_slot_never_waits() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(max_concurrency=1, max_queue=8)
        async with gate.slot(1000, max_wait=0.1):  # a free slot, however long its own work
            pass
        holders = Holders(gate)
        await holders.add(10)
        entered = asyncio.create_task(_enter(gate, max_wait=40))
        await asyncio.sleep(0)
        assert gate.waiting == 1, "queued, not refused"
        await holders.release()
        await entered

    asyncio.run(scenario())


async def _enter(gate: AdmissionGate, max_wait: float) -> None:
    async with gate.slot(5, max_wait=max_wait):
        pass
