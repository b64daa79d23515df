"""Waiting helpers: a shielded future that fails after the wait leaves no error behind."""

import asyncio
import gc

from fshipper.util import first


def unretrieved_after(wait) -> list:
    """What asyncio reports while `wait(inner)` gives up on a shield of `inner`,
    which then fails (its failure read from `inner`, as the producer does)."""
    reports = []

    async def run():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reports.append(context["message"]))
        inner = loop.create_future()
        await wait(inner)
        inner.set_exception(ConnectionError("late"))
        assert isinstance(inner.exception(), ConnectionError)
        await asyncio.sleep(0)   # the shield's callback runs
        gc.collect()             # and an unread exception would be reported now

    asyncio.run(run())
    return reports


def test_first_timing_out_leaves_no_unretrieved_exception():
    async def wait(inner):
        assert not await first(asyncio.shield(inner), asyncio.Event(), 0.01)
    assert unretrieved_after(wait) == []


def test_first_stopped_leaves_no_unretrieved_exception():
    async def wait(inner):
        stop = asyncio.Event()
        stop.set()
        assert not await first(asyncio.shield(inner), stop, None)
    assert unretrieved_after(wait) == []
