"""The micro-batcher: batching bounds, ordering, back-pressure and failure routing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from streams.batcher import MicroBatcher


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_batches_respect_max_batch_and_keep_order() -> None:
    sizes: list[int] = []
    delivered: list[int] = []

    def score(batch: Sequence[int]) -> list[int]:
        sizes.append(len(batch))
        return [x * 10 for x in batch]

    async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
        assert not isinstance(results, BaseException)
        assert list(results) == [x * 10 for x in batch]
        delivered.extend(batch)

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(score, deliver, max_batch=8, max_wait_s=0.05)
        b.start()
        for i in range(100):
            await b.submit(i)
        await b.stop()

    run(main())
    assert delivered == list(range(100))
    assert max(sizes) <= 8
    assert sum(sizes) == 100
    assert len(sizes) < 100  # requests were really batched


def test_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        done = asyncio.Event()

        async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
            done.set()

        b: MicroBatcher[int, int] = MicroBatcher(
            lambda xs: list(xs), deliver, max_batch=64, max_wait_s=0.02
        )
        b.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.submit(1)
        await asyncio.wait_for(done.wait(), 2)
        elapsed = loop.time() - t0
        await b.stop()
        return elapsed

    assert run(main()) < 1.0


def test_scoring_error_is_delivered_not_raised() -> None:
    got: list[object] = []

    def score(batch: Sequence[int]) -> list[int]:
        raise RuntimeError("model broke")

    async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
        got.append(results)

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(score, deliver, max_batch=4, max_wait_s=0)
        b.start()
        await b.submit(1)
        await b.drain()
        await b.submit(2)
        await b.stop()

    run(main())
    assert len(got) >= 2 and all(isinstance(r, RuntimeError) for r in got)


def test_submit_blocks_when_max_pending_is_reached() -> None:
    release = threading.Event()

    def score(batch: Sequence[int]) -> list[int]:
        release.wait(5)
        return list(batch)

    async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
        return None

    async def main() -> int:
        b: MicroBatcher[int, int] = MicroBatcher(
            score, deliver, max_batch=2, max_wait_s=0, max_pending=4
        )
        b.start()
        accepted = 0
        for i in range(20):
            try:
                await asyncio.wait_for(b.submit(i), 0.2)
            except TimeoutError:
                break
            accepted += 1
        release.set()
        await b.stop()
        return accepted

    accepted = run(main())
    assert accepted < 20  # back-pressure stopped the producer
    assert accepted >= 4


def test_rejects_bad_max_batch() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, None, max_batch=0)  # type: ignore[arg-type]


def test_the_next_batch_is_scored_while_the_previous_one_is_delivered() -> None:
    scoring_started = threading.Event()
    log: list[str] = []

    def score(batch: Sequence[int]) -> list[int]:
        log.append(f"score {batch[0]}")
        if batch[0] == 4:
            scoring_started.set()
        return list(batch)

    async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
        if batch[0] == 0:
            # The second batch was queued meanwhile: it is scored while this delivery
            # is still running (in the scoring thread), not after it.
            started = await asyncio.to_thread(scoring_started.wait, 5)
            assert started, "the next batch was not scored during this delivery"
        log.append(f"deliver {batch[0]}")

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(score, deliver, max_batch=4, max_wait_s=0.05)
        b.start()
        for i in range(8):
            await b.submit(i)
        await b.stop()

    run(main())
    assert log.index("score 4") < log.index("deliver 0")
    assert [x for x in log if x.startswith("deliver")] == ["deliver 0", "deliver 4"]


def test_inline_scoring_does_not_score_ahead() -> None:
    log: list[str] = []

    def score(batch: Sequence[int]) -> list[int]:
        log.append(f"score {batch[0]}")
        return list(batch)

    async def deliver(batch: Sequence[int], results: Sequence[int] | BaseException) -> None:
        log.append(f"deliver {batch[0]}")

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(
            score, deliver, max_batch=4, max_wait_s=0.05, inline=True
        )
        b.start()
        for i in range(8):
            await b.submit(i)
        await b.stop()

    run(main())
    assert log == ["score 0", "deliver 0", "score 4", "deliver 4"]
