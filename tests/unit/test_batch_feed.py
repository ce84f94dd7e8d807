"""The batch feed (streams/_faust.py, 9): what Faust's stream guarantees per record, kept."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage

from streams._faust import BatchFeed


class _Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _Consumer:
    def __init__(self) -> None:
        self.tracked: list[int] = []

    def track_message(self, message: Message) -> None:
        self.tracked.append(message.offset)


def _app(generation: int = 3) -> Any:
    app = SimpleNamespace(
        consumer=_Consumer(),
        flow_control=_Flow(),
        consumer_generation_id=generation,
    )
    app.conf = SimpleNamespace(Event=_Event)
    return app


class _Event:
    def __init__(self, app: Any, key: Any, value: Any, headers: Any, message: Message) -> None:
        self.app, self.key, self.value, self.message = app, key, value, message


def _message(offset: int, generation: int = 3) -> Message:
    # What Faust's consumer builds from a fetched record: untracked until taken.
    return ConsumerMessage(
        "events.click",
        0,
        offset,
        timestamp=0.0,
        timestamp_type=0,
        headers=[],
        key=b"u1",
        value=b"{}",
        checksum=None,
        tp=TP("events.click", 0),
        generation_id=generation,
    )


def test_records_reach_the_handler_in_order_tracked_and_as_the_current_event() -> None:
    app = _app()
    seen: list[tuple[int, bool]] = []

    async def handler(event: Any) -> None:
        await asyncio.sleep(0)  # the current event survives the handler's awaits
        seen.append((event.message.offset, faust.current_event() is event))

    feed = BatchFeed(app, frozenset({"events.click"}), handler)
    asyncio.run(feed.deliver([_message(o) for o in (5, 6, 7)]))
    assert seen == [(5, True), (6, True), (7, True)]
    assert app.consumer.tracked == [5, 6, 7]  # a rebalance waits for their acks
    assert faust.current_event() is None


def test_records_of_an_old_generation_or_after_the_flow_stopped_are_skipped_untracked() -> None:
    app = _app(generation=4)
    seen: list[int] = []

    async def handler(event: Any) -> None:
        seen.append(event.message.offset)
        if event.message.offset == 11:
            app.flow_control.active = False  # a rebalance starts while 11 is handled

    feed = BatchFeed(app, frozenset({"events.click"}), handler)
    messages = [_message(10, generation=3), _message(11, generation=4), _message(12)]
    asyncio.run(feed.deliver(messages))
    # 10 was fetched before the group's last rebalance; 12 after the flow stopped.
    # Neither is tracked: both are read again from the committed offset.
    assert seen == [11]
    assert app.consumer.tracked == [11]


def test_a_record_already_tracked_is_not_tracked_twice_and_errors_reset_the_event() -> None:
    app = _app()
    message = _message(1)
    message.tracked = True

    async def handler(event: Any) -> None:
        raise RuntimeError("boom")

    feed = BatchFeed(app, frozenset({"events.click"}), handler)
    try:
        asyncio.run(feed.deliver([message]))
    except RuntimeError:
        pass
    assert app.consumer.tracked == []
    assert faust.current_event() is None
