"""In-order acks: out-of-order deliveries never ack past an unfinished event."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.acks import InOrderAcks


@dataclass
class Msg:
    tp: tuple[str, int]
    offset: int


@dataclass
class FakeEvent:
    message: Msg
    acked: list[int] = field(default_factory=list)

    def ack(self) -> bool:
        self.acked.append(self.message.offset)
        return True


def test_acks_follow_offset_order_per_partition() -> None:
    log: list[tuple[int, int]] = []
    events = {}
    for p in (0, 1):
        for off in range(4):
            ev = FakeEvent(Msg(("clicks", p), off))
            ev.ack = lambda ev=ev: log.append((ev.message.tp[1], ev.message.offset)) or True  # type: ignore[method-assign]
            events[(p, off)] = ev
    acks = InOrderAcks()
    for key in sorted(events):
        acks.track(events[key])  # type: ignore[arg-type]
    acks.done(events[(0, 2)])  # type: ignore[arg-type]
    acks.done(events[(0, 1)])  # type: ignore[arg-type]
    acks.done(events[(1, 0)])  # type: ignore[arg-type]
    assert log == [(1, 0)]  # partition 0 still waits for offset 0
    acks.done(events[(0, 0)])  # type: ignore[arg-type]
    assert log == [(1, 0), (0, 0), (0, 1), (0, 2)]
    acks.done(events[(0, 3)])  # type: ignore[arg-type]
    assert log[-1] == (0, 3)
    assert acks.pending == 3


def test_event_waits_for_every_expected_delivery() -> None:
    """An event with a changelog record and a recommendation is acked after both."""
    log: list[int] = []
    events = []
    for off in range(3):
        ev = FakeEvent(Msg(("clicks", 0), off))
        ev.ack = lambda ev=ev: log.append(ev.message.offset) or True  # type: ignore[method-assign]
        events.append(ev)
    acks = InOrderAcks()
    for ev in events:
        acks.track(ev)  # type: ignore[arg-type]
        acks.expect(ev)  # type: ignore[arg-type]  # its changelog record
    acks.done(events[0])  # type: ignore[arg-type]  # changelog of 0 delivered
    assert log == []
    acks.done(events[1])  # type: ignore[arg-type]
    acks.done(events[1])  # type: ignore[arg-type]  # 1 is finished, 0 is not
    assert log == []
    acks.done(events[0])  # type: ignore[arg-type]
    assert log == [0, 1]
    assert acks.pending == 1
    acks.done(events[2])  # type: ignore[arg-type]
    acks.done(events[2])  # type: ignore[arg-type]
    assert log == [0, 1, 2]
    assert acks.pending == 0
