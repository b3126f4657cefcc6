"""Turns per round of the event loop: however many tasks ask at once, at most a few get
one each round, in the order they asked; one cancelled while it waits takes none, and
a round's turns are all given out again the round after."""

import asyncio
from collections import Counter

import pytest

from stream.rounds import Rounds

pytestmark = pytest.mark.anyio


async def test_a_crowd_gets_a_few_turns_a_round_first_come_first_served() -> None:
    rounds = Rounds(per_round=3)
    tick = 0
    got: list[tuple[int, int]] = []  # (task, the round it got its turn in)

    async def ticker() -> None:
        nonlocal tick
        while True:
            tick += 1
            await asyncio.sleep(0)  # one round

    async def ask(i: int) -> None:
        await rounds.turn()
        got.append((i, tick))

    counting = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    crowd = [asyncio.create_task(ask(i)) for i in range(30)]
    crowd[7].cancel()  # leaves while it waits
    crowd[8].cancel()
    await asyncio.gather(*crowd, return_exceptions=True)
    counting.cancel()
    order = [i for i, _ in got]
    assert order == [i for i in range(30) if i not in (7, 8)]
    per_round = Counter(t for _, t in got)
    assert max(per_round.values()) <= 3
    assert len(per_round) <= 10  # 28 turns, three a round: no round went unused


async def test_turns_come_at_once_when_nobody_waits() -> None:
    rounds = Rounds(per_round=2)
    await rounds.turn()
    await rounds.turn()  # both in this round, without waiting
    await asyncio.wait_for(rounds.turn(), 1)  # the next round's
