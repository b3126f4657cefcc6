"""A paced client (its tenant's `max_events_per_minute`): whatever the bursts, rates and
moments it disconnects, its messages leave in seq order, each cursor is the last batch of
what it has received by then, `coalesced` counts the batches a message holds, and a
client that resumes from any cursor it got misses nothing and sees nothing twice."""

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.encode import Filter, Outgoing, control
from stream.hub import Client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metrics(seq: int) -> Outgoing:
    """A batch's metrics message, its seq written into its deltas (so a merge shows it)."""
    message = {"type": "metrics", "seq": seq, "cursor": f"e:{seq}", "timestamp": "t",
               "data": {"src": {"last": seq}}, "deltas": {"src": {f"b{seq}": 1}}}  # fmt: skip
    return Outgoing("metrics", orjson.dumps(message).decode(), seq)


STEP = st.one_of(
    st.tuples(st.just("batches"), st.integers(1, 30)),  # a burst of commits
    st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
    st.tuples(st.just("read"), st.integers(1, 10)),  # the sender takes what may go
    st.tuples(st.just("ping"), st.just(0)),  # a control message among them
)


def drain(client: Client, clock: Clock, at_most: int, wait: bool = False) -> list[dict[str, Any]]:
    """What the sender takes: up to `at_most` messages that may go now (or, with `wait`,
    waiting for each as long as the pacing says)."""
    got = []
    for _ in range(at_most):
        item = client.poll()
        if isinstance(item, float) and wait:
            clock.now += max(item, 1e-3)  # (a wait of 1e-15 s would not move the clock)
            continue
        if not isinstance(item, Outgoing):
            break
        got.append(orjson.loads(item.text))
    return got


@settings(max_examples=300, deadline=None)
@given(per_minute=st.sampled_from([6, 60, 600, 6000]), steps=st.lists(STEP, max_size=40))
def test_paced_messages_leave_in_order_and_a_resume_from_any_cursor_misses_nothing(
    per_minute: int, steps: list[tuple[str, Any]]
) -> None:
    clock = Clock()
    client = Client(Filter(), 0, 1 << 30, clock)
    client.pace(per_minute)
    offered: list[int] = []
    received: list[dict[str, Any]] = []
    for what, n in steps:
        if what == "batches":
            for _ in range(n):
                seq = len(offered) + 1
                offered.append(seq)
                client.offer(metrics(seq))
        elif what == "wait":
            clock.now += n
        elif what == "ping":
            client.offer(control({"type": "pong"}))
        else:
            received += drain(client, clock, n)
    received += drain(client, clock, 10_000, wait=True)  # then the rest, as it may go
    data = [m for m in received if m["type"] == "metrics"]
    held: list[int] = []
    for message in data:
        batches = sorted(int(k[1:]) for k in message["deltas"]["src"])
        # Each message's cursor is the last batch it holds, and it says how many it holds.
        assert message["seq"] == batches[-1] and message["cursor"] == f"e:{batches[-1]}"
        assert message.get("coalesced", 1) == len(batches)
        assert message["data"]["src"]["last"] == batches[-1]
        held += batches
        # Resuming from this cursor: every batch up to it was received, none twice.
        assert held == list(range(1, message["seq"] + 1))
    assert held == offered
    assert len([m for m in received if m["type"] == "pong"]) == len(
        [s for s in steps if s[0] == "ping"]
    )


def test_a_burst_over_the_bucket_is_merged_into_the_newest_message_in_place() -> None:
    """The case of the issue: a burst queues several messages; one arriving while none may
    go joins the newest of them, never the oldest (which would move batch 6 behind
    cursor 7)."""
    clock = Clock()
    client = Client(Filter(), 0, 1 << 30, clock)
    client.pace(12)  # one a 5 s, a bucket of one
    for seq in range(1, 4):
        client.offer(metrics(seq))  # tokens were there when they came: queued apart
    first = client.poll()
    assert isinstance(first, Outgoing) and first.seq == 1
    client.offer(metrics(4))  # no token now: merged into batch 3's message
    assert isinstance(client.poll(), float)  # nothing may go yet
    clock.now += 5
    second = client.poll()
    assert isinstance(second, Outgoing) and second.seq == 2
    clock.now += 5
    third = client.poll()
    assert isinstance(third, Outgoing) and third.seq == 4
    assert orjson.loads(third.text)["coalesced"] == 2
