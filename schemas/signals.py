"""The writer's "appended up to seq N" signal, which the stream subscribes to."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Appended:
    """One committed batch: rows `first_seq`..`last_seq` are durable and readable."""

    batch: int
    first_seq: int
    last_seq: int
    ts: datetime
    tenant_ids: frozenset[str]
    committed_at: float  # time.time() just after the commit, in the writer's thread


Listener = Callable[[Appended], None]


class AppendSignal:
    """Synchronous fan-out of commit notices, called on the event loop's thread.

    Listeners must not block: they are expected to set an event or enqueue, never to
    do I/O, so one slow subscriber cannot hold up the writer.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, appended: Appended) -> None:
        for listener in list(self._listeners):
            listener(appended)
