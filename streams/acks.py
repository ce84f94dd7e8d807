"""Acknowledging input events in offset order, once everything they caused is delivered."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faust.types import EventT

__all__ = ["InOrderAcks"]


class InOrderAcks:
    """Acks events in offset order per partition, whatever order their outputs land in.

    An event is finished when every record it caused has been delivered: its
    recommendation or dead letter (counted by :meth:`track`) and its profile's
    changelog record (added by :meth:`expect`). Delivery reports for one input
    partition can arrive out of order (outputs and changelog go to different
    partitions). Faust's commit logic tolerates some out-of-order acks but can step
    over an unacked offset at the edges (e.g. before the first commit), so recstream
    never hands it a gap: an event is acked only when it and every earlier event of
    its partition are finished.

    An event whose record can never be delivered (e.g. a dead letter that failed to
    send) holds back its whole partition; :meth:`oldest_age` makes that visible
    (a gauge, an alert and a failing ``/healthz``, so the pod is restarted and the
    event redelivered).

    Args:
        clock: monotonic seconds (tests pass a fake clock).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._queues: dict[Any, deque[list[Any]]] = {}
        # id(event) -> [event, deliveries still outstanding, tracked at]; entries keep
        # their event alive, so an id is never reused while it is tracked.
        self._entries: dict[int, list[Any]] = {}
        self._clock = clock

    def track(self, event: EventT[Any]) -> None:
        """Register an event as it arrives (stream order = offset order); one delivery due."""
        tp = event.message.tp
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = deque()
        entry = [event, 1, self._clock()]
        queue.append(entry)
        self._entries[id(event)] = entry

    def expect(self, event: EventT[Any]) -> None:
        """One more delivery (e.g. a changelog record) is due before ``event`` is finished."""
        entry = self._entries.get(id(event))
        if entry is not None:
            entry[1] += 1

    def done(self, event: EventT[Any]) -> None:
        """One of ``event``'s records was delivered; ack the finished prefix of its partition."""
        entry = self._entries.get(id(event))
        if entry is None:
            event.ack()  # not tracked: nothing else to wait for
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        queue = self._queues[event.message.tp]
        while queue and queue[0][1] <= 0:
            finished = queue.popleft()[0]
            del self._entries[id(finished)]
            finished.ack()

    @property
    def pending(self) -> int:
        """Events tracked and not yet acked."""
        return len(self._entries)

    def oldest_age(self) -> float:
        """Seconds since the oldest event still waiting for its ack arrived (0 if none)."""
        heads = [queue[0][2] for queue in self._queues.values() if queue]
        return max(0.0, self._clock() - min(heads)) if heads else 0.0
