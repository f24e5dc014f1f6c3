"""Gossipsub for asyncio code: bytes in, bytes out, with every drop counted and none silent.

py-libp2p 0.8.1's gossipsub lives on the host's trio thread; :class:`PubsubService` is the
asyncio face of it (join, leave, publish, set_score, drop counters). Validators run on the
trio thread; deliveries hop to the asyncio loop with ``call_soon_threadsafe`` and never block
either side.

Parameters, set on purpose (py-libp2p's defaults lose a burst silently; field notes):

* **Strict signing** (``strict_signing=True``): every message carries its origin's key and
  signature; forged or unsigned messages are dropped before any validator sees them.
* **Heartbeat 1 s** (``HEARTBEAT``; py's default is 120 s, go's is 1 s): mesh repair, IHAVE
  gossip and score decay all run per heartbeat. py's "adaptive gossip" is **off**: at low
  "network health" (a small mesh, a quiet topic: the normal state of a household swarm) it
  rewrites the heartbeat to 30-60 s.
* **Rate limit** ``max_messages_per_topic_per_second = 1000`` per forwarding peer and topic
  (py: 10, which also counted our own publishes; a message over the limit was delivered
  locally, marked seen and never forwarded nor re-requested). Our own publishes are exempt
  (:class:`_GossipSub`), so a batch of our announcements is never cut. 1,000 is about 15x the
  busiest honest rate we can foresee (10,000 nodes x 500 updates a day is ~60 messages a
  second network-wide, unbatched); above it a peer is flooding: it is not forwarded and gets
  a behaviour penalty (P5) that soon gates it out.
* **Outbound queues of 1,024 RPCs per peer** (``OUTBOUND_QUEUE``; py: 32, dropped when full).
  :meth:`PubsubService.publish` also waits (trio checkpoints) while any peer's queue is nearly
  full, so our own messages are queued rather than dropped; it waits at most
  ``PUBLISH_WAIT`` seconds for a peer that does not read, then logs which peer may miss it.
* **No subscription channel**: py hands deliveries to a 32-message channel and drops the rest
  when the reader is slow; here they go straight to the asyncio loop. The bytes waiting there
  are bounded (``MAX_PENDING_BYTES``); past it a message is dropped *and counted*.
* **IDONTWANT as go does it**: only for received messages over 1 KiB (py sends one for every
  message, our own included, so each message cost two queue slots and ~400 B more), and we
  track up to 1,000 IDONTWANT ids per peer (py: 10).
* **seen_ttl 120 s** (go's TimeCacheDuration): a message id is remembered that long, far
  longer than it can circulate (mcache: 3 heartbeats of gossip, 5 of history), so an echo is
  never delivered twice.
* **Scoring on** (py: every weight 0): P4 invalid messages (weight 5, cap 100, decay 0.9 per
  heartbeat: about one invalid message a second sustained closes the publish gate), P5
  behaviour penalties (weight 1, decay 0.9), P6 the application's score from
  :meth:`PubsubService.set_score` (weight 100). Thresholds gossip -10, publish -50,
  graylist -80: an app score of -1 or lower graylists the peer (we stop forwarding to it,
  refuse its GRAFTs and drop what it forwards, as go's AcceptFrom does). P7 (IP colocation)
  stays off: LAN peers and test peers share addresses legitimately.
* Protocols ``/meshsub/1.2.0``, ``1.1.0``, ``1.0.0`` (what kubo, Helia and go speak; py's
  1.3+ extensions are not needed). Mesh degree D=6, D_lo=4, D_hi=12 (go's defaults).
* **One peer's bad input costs only that peer's stream.** py's reader catches a few stream
  errors but not a frame that is no protobuf RPC (``DecodeError``) nor any error while
  handling one RPC; that exception ended the pubsub service or the swarm's connection task,
  and with it the whole host (gossip, Bitswap, DHT). :meth:`_Pubsub.stream_handler` catches
  everything a read or an RPC raises: the stream is reset, py forgets the peer's stream
  state (as after any dead stream), and a drop is counted against the peer. The same for
  the tasks py starts per message or per peer (``push_msg``, replays, GRAFTs): a failure is
  logged (and for a message, counted), never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize, RpcQueue
from libp2p.pubsub.score import ScoreParams, TopicScoreParams

from pacswarm.ipfs.bridge import TrioBridge

log = logging.getLogger(__name__)

HEARTBEAT = 1
SEEN_TTL = 120
RATE_LIMIT = 1000.0
OUTBOUND_QUEUE = 1024
QUEUE_HEADROOM = 8  # publish waits while a queue has fewer free slots than this
PUBLISH_WAIT = 5.0
IDONTWANT_MIN_SIZE = 1024
MAX_IDONTWANT = 1000
MAX_PENDING_BYTES = 64 * 1024 * 1024
# py-libp2p resets a stream on an inbound RPC over 1 MiB; leave room for the signature, key,
# seqno, topic and signed peer record that wrap the data.
MAX_PUBLISH = DefaultMaxMessageSize - 16 * 1024
APP_SCORE_WEIGHT = 100.0
GOSSIP_THRESHOLD = -10.0
PUBLISH_THRESHOLD = -50.0
GRAYLIST_THRESHOLD = -80.0

Validate = Callable[[str, bytes], bool]
Deliver = Callable[[str, bytes], None]

# Set by _GossipSub.publish for the task forwarding one message: may it send IDONTWANT?
_idontwant_ok: contextvars.ContextVar[bool] = contextvars.ContextVar("idontwant", default=True)


class PubsubError(RuntimeError):
    """Pubsub used before the host started, after it stopped, or with an oversized message."""


class _RoomyQueues(dict[ID, RpcQueue]):
    """``Pubsub.peer_queues`` whose queues hold ``OUTBOUND_QUEUE`` RPCs (py builds them at 32)."""

    def __setitem__(self, peer: ID, queue: RpcQueue) -> None:
        queue._queue.max_size = OUTBOUND_QUEUE
        super().__setitem__(peer, queue)


class _GossipSub(GossipSub):
    """py's GossipSub with our publishes exempt from the rate limit and go's IDONTWANT rule."""

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        if self.pubsub is not None and peer_id == self.pubsub.my_id:
            return True
        return super()._check_spam_protection(peer_id, msg)

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        own = self.pubsub is not None and msg_forwarder == self.pubsub.my_id
        _idontwant_ok.set(not own and len(pubsub_msg.data) > IDONTWANT_MIN_SIZE)
        await super().publish(msg_forwarder, pubsub_msg)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if _idontwant_ok.get():
            await super()._emit_idontwant_for_message(msg_id, topic_ids)


class _ResetWatch:
    """A stream as py's reader sees it, noting whether py reset it (an oversized RPC)."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self.reset_by_reader = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def reset(self) -> None:
        self.reset_by_reader = True
        await self._stream.reset()


class _ForgivingManager:
    """py's service manager, but a non-daemon task that raises is logged, not fatal.

    py runs work for one peer or one message (``push_msg``, replays, GRAFTs on subscribe,
    the per-peer sender) as service tasks, and a service cancels itself when any task
    raises: one bad message would stop pubsub, and the host with it.
    """

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def run_task(
        self, async_fn: Callable[..., Awaitable[Any]], *args: Any, daemon: bool = False, **kw: Any
    ) -> None:
        if daemon:  # a daemon's end is meant to stop the service
            self._manager.run_task(async_fn, *args, daemon=True, **kw)
            return

        async def guarded(*a: Any) -> None:
            try:
                await async_fn(*a)
            except Exception:
                peer = a[0] if a and isinstance(a[0], ID) else "?"
                name = getattr(async_fn, "__name__", repr(async_fn))
                log.warning("pubsub task %s for peer %s failed", name, peer, exc_info=True)

        kw.setdefault("name", getattr(async_fn, "__name__", None))
        self._manager.run_task(guarded, *args, **kw)


class _Pubsub(Pubsub):
    """py's Pubsub with deliveries handed to :class:`PubsubService` instead of a 32-slot channel,
    and a peer's bad input confined to that peer (module docstring)."""

    def __init__(self, host: IHost, router: GossipSub, service: PubsubService) -> None:
        super().__init__(host, router, seen_ttl=SEEN_TTL, strict_signing=True)
        self.peer_queues = _RoomyQueues()
        self._service = service
        self._forgiving: _ForgivingManager | None = None

    @property
    def manager(self) -> Any:  # py's type is InternalManagerAPI; this wraps one
        inner = self._manager
        if self._forgiving is None or self._forgiving._manager is not inner:
            self._forgiving = _ForgivingManager(inner)
        return self._forgiving

    async def stream_handler(self, stream: INetStream) -> None:
        """Read a peer's inbound stream; whatever it sends can end only this stream."""
        peer = stream.muxed_conn.peer_id
        watched = _ResetWatch(stream)
        try:
            await self.continuously_read_stream(watched)  # type: ignore[arg-type]
        except Exception as e:  # no RPC, truncated, or an RPC whose handling raised
            log.info("pubsub stream from %s: %s: %s; resetting it", peer, type(e).__name__, e)
            self._service._count_drop(peer.to_base58())
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer)
        else:
            if watched.reset_by_reader:  # py refused an RPC over its size limit
                self._service._count_drop(peer.to_base58())

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._service._on_message(publish_message)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # go's AcceptFrom: nothing from a graylisted peer. Checked here, not in the topic
        # validator, because py caches validator verdicts by message id: a copy refused for
        # its forwarder would then be refused from honest forwarders too.
        try:
            if msg_forwarder != self.my_id and not self._is_msg_seen(msg):
                scorer = getattr(self.router, "scorer", None)
                if scorer is not None and scorer.is_graylisted(msg_forwarder, list(msg.topicIDs)):
                    self._service._count_drop(msg_forwarder.to_base58())
                    return
            await super().push_msg(msg_forwarder, msg)
        except Exception:
            if msg_forwarder == self.my_id:
                raise  # our own publish: the caller hears of it
            # debug: a flood of such messages must not flood the log; the drop count shows it
            log.debug("pubsub message from %s broke its handling", msg_forwarder, exc_info=True)
            self._service._count_drop(msg_forwarder.to_base58())


def _score_params(app_score: Callable[[ID], float]) -> ScoreParams:
    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=5.0, cap=100.0, decay=0.9),
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=0.9,
        p5_behavior_penalty_threshold=0.0,
        p6_appl_slack_weight=APP_SCORE_WEIGHT,
        p6_appl_slack_decay=1.0,
        publish_threshold=PUBLISH_THRESHOLD,
        gossip_threshold=GOSSIP_THRESHOLD,
        graylist_threshold=GRAYLIST_THRESHOLD,
        accept_px_threshold=0.0,
        app_specific_score_fn=app_score,
    )


class _Topic:
    """One joined topic: the application's callbacks and the asyncio loop to deliver on."""

    def __init__(self, validate: Validate, deliver: Deliver, loop: asyncio.AbstractEventLoop):
        self.validate = validate
        self.deliver = deliver
        self.loop = loop


class PubsubService:
    """Gossipsub topics for asyncio code (see the module docstring for the parameters).

    Created by :class:`~pacswarm.ipfs.host.P2PHost`; usable once the host has started.
    """

    def __init__(self, bridge: TrioBridge) -> None:
        self._bridge = bridge
        self._pubsub: _Pubsub | None = None
        self._router: _GossipSub | None = None
        self._my_id: ID | None = None
        self._topics: dict[str, _Topic] = {}
        self._scores: dict[str, float] = {}
        self._drops: dict[str, int] = {}
        self._received = 0
        self._dropped = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()

    # trio side: built and run by the host ------------------------------------------------

    def build(self, host: IHost) -> tuple[_Pubsub, _GossipSub]:
        """Make the router and pubsub for ``host`` (trio thread; the host runs both services)."""
        router = _GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=HEARTBEAT,
            heartbeat_initial_delay=0.1,
            score_params=_score_params(self._app_score),
            max_idontwant_messages=MAX_IDONTWANT,
            adaptive_gossip_enabled=False,
            max_messages_per_topic_per_second=RATE_LIMIT,
        )
        pubsub = _Pubsub(host, router, self)
        self._pubsub, self._router, self._my_id = pubsub, router, host.get_id()
        return pubsub, router

    def detach(self) -> None:
        """The host stopped: stop py's seen-cache sweeper thread, forget the objects."""
        pubsub, self._pubsub, self._router = self._pubsub, None, None
        if pubsub is not None:
            pubsub.seen_messages.stop()

    def _app_score(self, peer: ID) -> float:
        return self._scores.get(peer.to_base58(), 0.0)

    def _validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if forwarder == self._my_id:
                return True  # our own publish
            entry = self._topics.get(topic)
            peer = forwarder.to_base58()
            try:
                ok = entry is not None and bool(entry.validate(peer, msg.data))
            except Exception:
                log.exception("pubsub validator for %s raised on a message from %s", topic, peer)
                ok = False
            if not ok:
                self._count_drop(peer)
            return ok

        return check

    def _count_drop(self, peer: str) -> None:
        with self._lock:
            self._drops[peer] = self._drops.get(peer, 0) + 1
            self._dropped += 1

    def _on_message(self, msg: rpc_pb2.Message) -> None:
        """A validated message (trio thread): hand it to each joined topic's asyncio loop."""
        origin = ID(msg.from_id)
        if origin == self._my_id:
            return
        for topic in msg.topicIDs:
            entry = self._topics.get(topic)
            if entry is None:
                continue
            size = len(msg.data)
            with self._lock:
                if self._pending_bytes + size > MAX_PENDING_BYTES:
                    self._dropped += 1
                    log.warning("pubsub %s: delivery backlog full, message dropped", topic)
                    continue
                self._pending_bytes += size
                self._received += 1
            try:
                entry.loop.call_soon_threadsafe(
                    self._deliver, entry, origin.to_base58(), bytes(msg.data)
                )
            except RuntimeError:  # the asyncio loop is closed: nobody to deliver to
                with self._lock:
                    self._pending_bytes -= size

    def _deliver(self, entry: _Topic, origin: str, data: bytes) -> None:
        with self._lock:
            self._pending_bytes -= len(data)
        try:
            entry.deliver(origin, data)
        except Exception:
            log.exception("pubsub deliver callback raised on a message from %s", origin)

    # asyncio API ----------------------------------------------------------------------------

    async def join(self, topic: str, validate: Validate, deliver: Deliver) -> None:
        """Subscribe to ``topic``; joining again replaces the callbacks.

        ``validate(forwarder_peer_id, data)`` runs on the trio thread for every message that
        another peer forwards to us (our own publishes skip it); it must be quick,
        thread-safe and must not raise (an exception counts as False). False drops the
        message and counts a drop against the forwarder (:meth:`drops`). py caches the
        verdict by message id (5 min), so judge the content (signed by its origin), not the
        forwarder; other copies of a refused message are dropped uncounted.
        ``deliver(origin_peer_id, data)`` runs on this asyncio loop for every accepted
        message from another origin, once per message id (our own messages are not echoed).
        """
        entry = _Topic(validate, deliver, asyncio.get_running_loop())
        await self._bridge.run(self._join_in_trio, topic, entry)

    async def _join_in_trio(self, topic: str, entry: _Topic) -> None:
        pubsub = self._require()
        self._topics[topic] = entry
        pubsub.set_topic_validator(topic, self._validator(topic), False)
        await pubsub.subscribe(topic)

    async def leave(self, topic: str) -> None:
        """Unsubscribe; nothing more is delivered for ``topic``."""
        await self._bridge.run(self._leave_in_trio, topic)

    async def _leave_in_trio(self, topic: str) -> None:
        pubsub = self._require()
        self._topics.pop(topic, None)
        pubsub.remove_topic_validator(topic)
        await pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and send ``data`` to ``topic``'s mesh (joined or not); never dropped locally.

        Waits while a peer's outbound queue is nearly full (see the module docstring).
        Raises :class:`PubsubError` for data over ``MAX_PUBLISH`` bytes: peers would reset
        the stream; split it (announcements come in batches for this reason).
        """
        if len(data) > MAX_PUBLISH:
            raise PubsubError(
                f"pubsub message of {len(data)} bytes is over the {MAX_PUBLISH}-byte limit "
                "(peers reset streams carrying RPCs over 1 MiB): send it in smaller batches"
            )
        await self._bridge.run(self._publish_in_trio, topic, bytes(data))

    async def _publish_in_trio(self, topic: str, data: bytes) -> None:
        pubsub = self._require()
        with trio.move_on_after(PUBLISH_WAIT):
            while full := self._full_queues(pubsub):
                await trio.sleep(0.005)
        if full:
            log.warning("pubsub %s: peers %s are not reading; they may miss a message", topic, full)
        await pubsub.publish(topic, data)
        await trio.lowlevel.checkpoint()  # let the per-peer senders drain

    @staticmethod
    def _full_queues(pubsub: Pubsub) -> list[str]:
        limit = OUTBOUND_QUEUE - QUEUE_HEADROOM
        return [p.to_base58() for p, q in pubsub.peer_queues.items() if len(q) >= limit]

    def set_score(self, peer_id: str, score: float) -> None:
        """The application's opinion of a peer (gossipsub P6); < 0 is bad, <= -1 graylists.

        Thread-safe, takes effect at the peer's next score computation. 0 forgets it.
        """
        if score == 0:
            self._scores.pop(peer_id, None)
        else:
            self._scores[peer_id] = float(score)

    async def peer_score(self, peer_id: str, topic: str) -> float:
        """Gossipsub's score for ``peer_id`` on ``topic`` (all components, as py computes it)."""
        return await self._bridge.run(self._score_in_trio, peer_id, topic)

    async def _score_in_trio(self, peer_id: str, topic: str) -> float:
        self._require()
        assert self._router is not None and self._router.scorer is not None
        return float(self._router.scorer.score(ID.from_base58(peer_id), [topic]))

    async def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our mesh for ``topic`` (for tests and diagnostics)."""
        return await self._bridge.run(self._mesh_in_trio, topic)

    async def _mesh_in_trio(self, topic: str) -> list[str]:
        self._require()
        assert self._router is not None
        return [p.to_base58() for p in self._router.mesh.get(topic, set())]

    def drops(self) -> dict[str, int]:
        """Messages dropped by validation or refused from a graylisted peer, per forwarder."""
        with self._lock:
            return dict(self._drops)

    def received(self) -> int:
        """Messages from other origins accepted and handed to ``deliver`` so far."""
        return self._received

    def dropped(self) -> int:
        """Messages dropped so far: validator drops plus any lost to a full delivery backlog."""
        return self._dropped

    def _require(self) -> _Pubsub:
        if self._pubsub is None:
            raise PubsubError("pubsub is not running: start the P2PHost first")
        return self._pubsub
