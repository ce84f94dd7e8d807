"""In-order acks: out-of-order deliveries never ack past an unfinished event."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.agents import InOrderAcks


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
