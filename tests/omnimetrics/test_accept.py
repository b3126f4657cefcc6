"""Connections waiting in the kernel's queue are accepted in one round of the event loop,
on uvloop too (libuv takes one a round: a thousand reconnecting clients would hold a
request behind them for seconds), and nothing is accepted once the server is closed."""

import asyncio
import socket

import uvloop

from omnimetrics.accept import BatchAccept

WAITING = 200


async def _rounds_until_all_made() -> tuple[int, int]:
    made: list[asyncio.Transport] = []

    class Counting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)  # type: ignore[arg-type]

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = BatchAccept(listener, Counting, backlog=1024)
    clients = []
    for _ in range(WAITING):  # all in the accept queue before the loop looks
        client = socket.socket()
        client.connect(listener.getsockname())
        clients.append(client)
    rounds = 0
    while len(made) < WAITING and rounds < 10 * WAITING:
        await asyncio.sleep(0)
        rounds += 1
    server.close()
    await server.wait_closed()
    late = socket.socket()
    late.connect(listener.getsockname())  # the kernel still queues it; nobody accepts
    for _ in range(20):
        await asyncio.sleep(0)
    accepted = len(made)
    for transport in made:
        transport.close()
    for sock in [*clients, late, listener]:
        sock.close()
    return rounds, accepted


def test_every_waiting_connection_is_accepted_within_a_few_rounds() -> None:
    for factory in (uvloop.new_event_loop, asyncio.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            rounds, accepted = runner.run(_rounds_until_all_made())
        assert rounds <= 10, (factory, rounds)  # uvloop's own server: one a round
        assert accepted == WAITING, factory
