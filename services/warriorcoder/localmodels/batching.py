"""Dynamic batching for one model: requests that arrive together are served by one blocking call.

Usage::

    batcher = Batcher("qwen", engine.run_batch, max_batch_size=8, wait_s=0.005)
    completions = await batcher.submit(Job(prompt, {"max_tokens": 32}))
    await batcher.aclose()  # on the batcher's loop; from another thread: batcher.close()

A batch is the first waiting request plus whatever arrives within ``wait_s``, up to
``max_batch_size``; it runs in the model's own worker thread, so the loop keeps accepting requests
meanwhile, and requests that arrive during a batch form the next one.

The batcher binds to the event loop of its first ``submit`` (in the HF server, PyTriton's inference
loop for the model) and owns one task there, which collects and runs the batches. ``aclose`` (or
``close`` from another thread, while that loop runs) cancels that task and waits for it; requests
still queued or in the cut batch fail with ``ShuttingDown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from warriorcoder.localmodels.jobs import Completion, Job, RunBatch, ShuttingDown

__all__ = ["Batcher"]

LOGGER = logging.getLogger("warriorcoder.localmodels.batching")

_Item = tuple[Job, "asyncio.Future[list[Completion]]"]


class Batcher:
    """Collects one model's requests into batches and runs them in the model's worker thread."""

    def __init__(self, name: str, run: RunBatch, *, max_batch_size: int, wait_s: float) -> None:
        self.name = name
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.batches = 0
        self.requests = 0
        self.largest = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{name}")

    async def submit(self, job: Job) -> list[Completion]:
        """The job's completions once its batch has run; raises the job's ``ValueError``."""
        if self._closed:
            raise ShuttingDown(f"{self.name}: the server is shutting down")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done():
            # First request, or the serving task died: (re)start it on this loop.
            self._queue = asyncio.Queue()
            self._loop = loop
            self._task = loop.create_task(self._serve(self._queue), name=f"batcher-{self.name}")
        future: asyncio.Future[list[Completion]] = loop.create_future()
        await self._queue.put((job, future))
        return await future

    async def aclose(self) -> None:
        """Stop: cancel the batching task and wait for it, fail what waits, stop the worker.

        Run on the batcher's loop; idempotent.
        """
        self._closed = True
        task, queue = self._task, self._queue
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if queue is not None:
            while not queue.empty():
                _, fut = queue.get_nowait()
                _fail(fut, self.name)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self, timeout: float = 10.0) -> None:
        """``aclose`` from another thread: runs it on the batcher's loop and waits for it.

        When that loop has already stopped, its owner has cancelled and awaited the task (PyTriton
        does so when it closes an inference loop), so only the worker thread is left to stop.
        """
        loop = self._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise RuntimeError(f"{self.name}: on the batcher's own loop, await aclose()")
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout)
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return [(job, fut) for job, fut in batch if not fut.done()]

    async def _serve(self, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            self.batches += 1
            self.requests += len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self.run, [job for job, _ in batch]
                )
            except asyncio.CancelledError:
                for _, fut in batch:  # closing: the batch's answers will never come
                    _fail(fut, self.name)
                raise
            except Exception as exc:  # the whole batch failed (e.g. out of memory)
                LOGGER.error(
                    "%s: batch of %d requests failed: %s",
                    self.name,
                    len(batch),
                    exc,
                    exc_info=not isinstance(exc, ShuttingDown),
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"{self.name}: generation failed: {exc}"))
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, Exception):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)


def _fail(fut: asyncio.Future[list[Completion]], name: str) -> None:
    if not fut.done():
        fut.set_exception(ShuttingDown(f"{name}: the server is shutting down"))
