"""Micro-batching: many users' scoring requests in one inference call.

The stream task decodes events and updates profiles one by one (table writes must
happen inside stream iteration so they reach the changelog). It then hands each
request to the :class:`MicroBatcher`, which collects up to ``max_batch`` requests or
waits at most ``max_wait_s`` after the first, runs ONE inference call for the batch
in a worker thread (onnxruntime releases the GIL, so the stream keeps decoding the
next events meanwhile) and delivers the results in submission order. While a batch
is delivered, the requests queued meanwhile are already being scored.

Back-pressure: at most ``max_pending`` requests wait; beyond that ``submit`` blocks
the stream, so a slow model slows consumption instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

log = logging.getLogger("recstream.batcher")

Req = TypeVar("Req")
Res = TypeVar("Res")


class MicroBatcher(Generic[Req, Res]):
    """Collects requests into batches, scores them in a thread, delivers in order.

    Args:
        score: blocking function scoring a whole batch; returns one result per request.
        deliver: coroutine called with each batch and its results (or the exception
            raised by ``score``), in submission order.
        max_batch: most requests per inference call.
        max_wait_s: longest a request waits for the batch to fill, seconds.
        max_pending: most requests queued before ``submit`` blocks.
        executor: thread pool running ``score`` (``None``: the loop's default).
        inline: run ``score`` on the event loop itself. No thread hand-offs (and no
            GIL convoy) but the stream waits while a batch is scored; best when
            inference is short or the machine has few cores.
    """

    def __init__(
        self,
        score: Callable[[Sequence[Req]], Sequence[Res]],
        deliver: Callable[[Sequence[Req], Sequence[Res] | BaseException], Awaitable[None]],
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_pending: int | None = None,
        executor: Executor | None = None,
        inline: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._score = score
        self._deliver = deliver
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_pending = max_pending or 4 * max_batch
        self._executor = executor
        self._inline = inline
        self._buf: deque[Req] = deque()
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background batching task on the running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Deliver what is queued, then stop the background task."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, request: Req) -> None:
        """Queue one request; waits while ``max_pending`` requests are queued."""
        while len(self._buf) >= self.max_pending:
            self._space.clear()
            await self._space.wait()
        self._buf.append(request)
        self._idle.clear()
        self._has_items.set()
        if len(self._buf) >= self.max_batch:
            self._full.set()

    async def drain(self) -> None:
        """Wait until every submitted request has been delivered."""
        while self._buf or not self._idle.is_set():
            await self._idle.wait()
            if self._buf:
                await asyncio.sleep(0)

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken into a batch."""
        return len(self._buf)

    def _take(self) -> list[Req]:
        """Up to ``max_batch`` queued requests, oldest first."""
        n = min(self.max_batch, len(self._buf))
        batch = [self._buf.popleft() for _ in range(n)]
        if len(self._buf) < self.max_batch:
            self._full.clear()
        if not self._buf:
            self._has_items.clear()
        self._space.set()
        return batch

    def _start(self, batch: list[Req]) -> asyncio.Future[Sequence[Res]]:
        """Score ``batch`` in the scoring thread."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._score, batch)

    async def _results(
        self, batch: list[Req], work: Awaitable[Sequence[Res]]
    ) -> Sequence[Res] | BaseException:
        try:
            return await work
        except Exception as exc:  # a scoring bug must not kill the stream
            log.exception("scoring a batch of %d failed", len(batch))
            return exc

    async def _run(self) -> None:
        # With a scoring thread, the next batch is scored while this one is delivered
        # (its requests' snapshots were taken when they were submitted), so inference
        # and delivery overlap; deliveries stay in submission order.
        ahead: tuple[list[Req], asyncio.Future[Sequence[Res]]] | None = None
        while True:
            if ahead is None:
                await self._has_items.wait()
                if len(self._buf) < self.max_batch and self.max_wait_s > 0:
                    try:
                        await asyncio.wait_for(self._full.wait(), self.max_wait_s)
                    except TimeoutError:
                        pass
                batch = self._take()
                if self._inline:
                    try:
                        results: Sequence[Res] | BaseException = self._score(batch)
                    except Exception as exc:  # a scoring bug must not kill the stream
                        log.exception("scoring a batch of %d failed", len(batch))
                        results = exc
                else:
                    results = await self._results(batch, self._start(batch))
            else:
                batch, work = ahead
                ahead = None
                results = await self._results(batch, work)
            if self._buf and not self._inline:
                # What arrived meanwhile is scored now, beside this delivery.
                upcoming = self._take()
                ahead = (upcoming, self._start(upcoming))
            try:
                await self._deliver(batch, results)
            except Exception:
                log.exception("delivering a batch of %d failed", len(batch))
            if not self._buf and ahead is None:
                self._idle.set()
