"""One request, one response, per stream: py-libp2p's RequestResponse for asyncio code.

Used for pulls that do not fit gossip (a whole inventory). Each exchange opens a stream,
writes one varint-framed request, reads one varint-framed response and closes it
(py-libp2p's ``libp2p.request_response``). Limits are enforced on both sides: the server
refuses requests over ``max_request`` and never sends more than ``max_response``; the
asker reads at most its own ``max_response``. Whatever goes wrong for the asker (no route,
protocol not spoken, timeout, the peer's handler failing, an oversized answer) is one
:class:`RequestFailed` that says which peer, which protocol and why.

Handlers are asyncio coroutines: the trio side submits them to the asyncio loop with
``run_coroutine_threadsafe`` and waits without blocking either loop; a handler still running
when the exchange times out is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.request_response import (
    BytesCodec,
    MessageTooLargeError,
    ProtocolNotSupportedError,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
    RequestResponseError,
    RequestTimeoutError,
)

from pacswarm.ipfs.bridge import TrioBridge

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes]]

SERVE_TIMEOUT = 30.0  # seconds a served exchange may take, reading and handling included
MAX_INBOUND = 32  # exchanges served at once per protocol; more are reset


class RequestFailed(RuntimeError):
    """An :meth:`RequestService.ask` got no usable response (the message says why)."""

    def __init__(self, peer_id: str, protocol: str, reason: str) -> None:
        super().__init__(f"request {protocol} to peer {peer_id} failed: {reason}")
        self.peer_id = peer_id
        self.protocol = protocol
        self.reason = reason


@dataclass(frozen=True)
class _Served:
    handler: Handler
    loop: asyncio.AbstractEventLoop
    config: RequestResponseConfig


class RequestService:
    """Request/response protocols of one :class:`~pacswarm.ipfs.host.P2PHost`."""

    def __init__(self, bridge: TrioBridge) -> None:
        self._bridge = bridge
        self._rr: RequestResponse | None = None
        self._served: dict[str, _Served] = {}

    # trio side ----------------------------------------------------------------------------

    def attach(self, host: IHost) -> None:
        """The host is up (trio thread): install the protocols served so far."""
        self._rr = RequestResponse(host)
        for protocol, served in list(self._served.items()):
            self._install(protocol, served)

    def detach(self) -> None:
        self._rr = None

    def _install(self, protocol: str, served: _Served) -> None:
        assert self._rr is not None

        async def handle(request: bytes, context: RequestContext) -> bytes:
            return await _on_asyncio(served, context.peer_id.to_base58(), request)

        self._rr.set_handler(TProtocol(protocol), handle, BytesCodec(), served.config)

    async def _install_in_trio(self, protocol: str, served: _Served) -> None:
        if self._rr is not None:
            self._install(protocol, served)

    # asyncio API ----------------------------------------------------------------------------

    def serve(self, protocol: str, handler: Handler, max_request: int, max_response: int) -> None:
        """Answer ``protocol`` with ``await handler(peer_id, request) -> response``.

        The handler runs on this asyncio loop. A request over ``max_request`` bytes, a
        handler that raises or takes over ``SERVE_TIMEOUT`` seconds, or a response over
        ``max_response`` bytes resets the stream (the asker gets :class:`RequestFailed`).
        Call before or after the host starts; serving the same protocol again replaces it.
        """
        config = RequestResponseConfig(
            timeout=SERVE_TIMEOUT,
            max_request_size=max_request,
            max_response_size=max_response,
            max_concurrent_inbound=MAX_INBOUND,
        )
        served = _Served(handler, asyncio.get_running_loop(), config)
        self._served[protocol] = served
        if self._bridge.running:  # else attach() installs it when the host comes up
            self._bridge.start_soon(self._install_in_trio, protocol, served)

    async def ask(
        self,
        peer_id: str,
        protocol: str,
        data: bytes,
        *,
        timeout: float = 10.0,
        max_response: int = 10 * 1024**2,
    ) -> bytes:
        """Send ``data`` to a connected (or dialable) peer and return its response.

        The whole exchange (stream, request, response) is bounded by ``timeout`` seconds.
        Raises :class:`RequestFailed`.
        """
        config = RequestResponseConfig(
            timeout=timeout,
            max_request_size=max(len(data), 1),
            max_response_size=max_response,
        )
        try:
            return await self._bridge.run(self._ask_in_trio, peer_id, protocol, bytes(data), config)
        except RequestFailed:
            raise
        except Exception as e:
            raise RequestFailed(peer_id, protocol, f"{type(e).__name__}: {e}") from e

    async def _ask_in_trio(
        self, peer_id: str, protocol: str, data: bytes, config: RequestResponseConfig
    ) -> bytes:
        if self._rr is None:
            raise RequestFailed(peer_id, protocol, "the host is not running")
        try:
            peer = ID.from_base58(peer_id)
        except Exception as e:
            raise RequestFailed(peer_id, protocol, f"not a peer ID ({e})") from e
        try:
            with trio.fail_after(config.timeout + 1):  # belt and braces over py's own timeout
                return await self._rr.send_request(
                    peer, [TProtocol(protocol)], data, BytesCodec(), config
                )
        except (RequestTimeoutError, trio.TooSlowError) as e:
            raise RequestFailed(peer_id, protocol, f"no response within {config.timeout} s") from e
        except MessageTooLargeError as e:
            why = f"response over {config.max_response_size} bytes ({e})"
            raise RequestFailed(peer_id, protocol, why) from e
        except ProtocolNotSupportedError as e:
            raise RequestFailed(peer_id, protocol, "the peer does not speak it") from e
        except RequestResponseError as e:
            cause = e.__cause__
            detail = f"{e}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
            why = f"the peer reset or closed the exchange: {detail}"
            raise RequestFailed(peer_id, protocol, why) from e


async def _on_asyncio(served: _Served, peer_id: str, request: bytes) -> bytes:
    """Run the asyncio handler from the trio thread; cancel it if the trio side gives up."""
    try:
        future = asyncio.run_coroutine_threadsafe(
            _call(served.handler, peer_id, request), served.loop
        )
    except RuntimeError as e:  # the asyncio loop is closed
        raise RequestResponseError(f"no asyncio loop to answer on: {e}") from e
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[bytes]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    finally:
        if not future.done():
            future.cancel()
    result = future.result()
    if not isinstance(result, (bytes, bytearray, memoryview)):
        raise TypeError(f"request handler returned {type(result).__name__}, not bytes")
    return bytes(result)


async def _call(handler: Handler, peer_id: str, request: bytes) -> bytes:
    try:
        return await handler(peer_id, request)
    except Exception:
        log.warning("request handler failed for a request from %s", peer_id, exc_info=True)
        raise
