"""A trio event loop on a worker thread, driven from asyncio.

py-libp2p is trio-only while the proxy is asyncio/aiohttp. Mixing the two loops ad hoc breaks
in subtle ways, so trio gets its own thread and one nursery, and the asyncio side reaches it
only through :meth:`TrioBridge.run`:

* work goes in with the trio token's ``run_sync_soon(nursery.start_soon, ...)``, which never
  blocks the asyncio loop (``trio.from_thread.run`` would, until the trio call finishes);
* results and exceptions come back with ``loop.call_soon_threadsafe``;
* cancelling the asyncio awaiter cancels the trio task through its own ``CancelScope`` and
  waits (briefly) for it to unwind, so nothing keeps touching caller-owned objects afterwards.

The trio thread never sees SIGINT, so :meth:`stop` / :meth:`aclose` must run in a ``finally``:
they cancel the nursery and join the thread. The thread is a daemon as a last resort only, so a
trio task that ignores cancellation cannot keep the process alive at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

CANCEL_GRACE = 5.0  # seconds an asyncio awaiter waits for its cancelled trio task to unwind


class BridgeError(RuntimeError):
    """The trio thread is not running (never started, stopped, or crashed)."""


class BridgeCancelled(BridgeError):
    """The trio task was cancelled from the trio side (bridge stopping)."""


class _Job:
    """One asyncio -> trio call; every field is touched only on the trio thread after submit."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], fn: Any, args: Any
    ) -> None:
        self.loop = loop
        self.fut = fut
        self.fn = fn
        self.args = args
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()

    def finish(self, result: Any = None, exc: BaseException | None = None) -> None:
        def deliver() -> None:
            if self.fut.done():
                return
            if exc is not None:
                self.fut.set_exception(exc)
            else:
                self.fut.set_result(result)

        # RuntimeError: the asyncio loop is closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(deliver)


class TrioBridge:
    """Runs ``trio.run`` on a worker thread and submits coroutines to it from asyncio."""

    def __init__(self, name: str = "pacswarm-trio") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._done_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._crash: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._token is not None and not self._done.is_set()

    @property
    def nursery(self) -> trio.Nursery:
        """The bridge's nursery, for long-lived trio tasks. Use only on the trio thread."""
        if self._nursery is None:
            raise BridgeError("trio bridge is not running")
        return self._nursery

    def start(self, timeout: float = 10.0) -> None:
        """Start the trio thread and wait until it accepts work (milliseconds)."""
        if self._thread is not None:
            raise BridgeError("trio bridge already started")
        self._thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BridgeError("trio thread did not start")
        if self._crash is not None:
            raise BridgeError(f"trio thread crashed at start: {self._crash!r}")

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as e:
            self._crash = e
            log.exception("trio bridge thread crashed")
        finally:
            self._nursery = None
            self._ready.set()
            with self._lock:
                self._done.set()
                callbacks, self._done_callbacks = self._done_callbacks, []
            for callback in callbacks:
                callback()

    async def _trio_main(self) -> None:
        self._stop_event = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop_event.wait()
            nursery.cancel_scope.cancel()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Fire and forget ``fn(*args)`` on the trio thread, from any thread (no result).

        For callbacks that arrive on foreign threads (zeroconf's mDNS listener); False if
        the bridge is not running.
        """
        token, nursery = self._token, self._nursery
        if token is None or nursery is None or self._done.is_set():
            return False
        try:
            token.run_sync_soon(nursery.start_soon, fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the trio thread; return its result to this asyncio task.

        Exceptions raised by ``fn`` propagate here unchanged. Cancelling this awaiter cancels
        the trio task and waits up to ``CANCEL_GRACE`` seconds for it to finish.
        """
        token, nursery = self._token, self._nursery
        if token is None or nursery is None or self._done.is_set():
            raise BridgeError("trio bridge is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        job = _Job(loop, fut, fn, args)
        try:
            token.run_sync_soon(nursery.start_soon, self._run_job, job)
        except trio.RunFinishedError:
            raise BridgeError("trio bridge is not running") from None
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._cancel_job(token, job)
            await asyncio.wait({fut}, timeout=CANCEL_GRACE)
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: the caller is gone
            raise

    @staticmethod
    def _cancel_job(token: trio.lowlevel.TrioToken, job: _Job) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(job.cancel)

    @staticmethod
    async def _run_job(job: _Job) -> None:
        finished = False
        try:
            with trio.CancelScope() as scope:
                job.scope = scope
                if job.cancel_requested:
                    scope.cancel()
                try:
                    result = await job.fn(*job.args)
                except Exception as e:
                    job.finish(exc=e)
                else:
                    job.finish(result)
                finished = True
        finally:
            if not finished:
                job.finish(exc=BridgeCancelled("trio task cancelled"))

    def _request_stop(self) -> bool:
        """Ask the trio thread to cancel everything; False if it already ended."""
        token, event = self._token, self._stop_event
        if token is None or event is None or self._done.is_set():
            return False
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel all trio tasks and join the thread (blocking; see :meth:`aclose`)."""
        self._request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("trio thread did not stop within %.1f s", timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Like :meth:`stop`, but waits on the asyncio loop instead of blocking it."""
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        def notify() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake)

        with self._lock:
            if self._done.is_set():
                done.set_result(None)
            else:
                self._done_callbacks.append(notify)
        self._request_stop()
        await asyncio.wait({done}, timeout=timeout)
        self._thread.join(0.5)
        if self._thread.is_alive():
            log.error("trio thread did not stop within %.1f s", timeout)
