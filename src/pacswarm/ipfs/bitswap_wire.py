"""Bitswap wire format on py-libp2p streams: framing, block prefixes, stream tuning.

Separate from :mod:`.bitswap` so the engine reads as protocol logic. Everything here is
what kubo, Helia and py-libp2p agree on: uvarint-length-prefixed protobuf ``Message`` s of at
most 4 MiB, v1.1 block prefixes (CID version, codec, multihash type and length).
"""

from __future__ import annotations

import hashlib
import logging

from libp2p.abc import INetStream
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.custom_types import TProtocol

from pacswarm.ipfs.cid import CID, DAG_PB, SHA2_256, CIDError, decode_varint, encode_varint

log = logging.getLogger(__name__)

PROTO_120 = TProtocol("/ipfs/bitswap/1.2.0")
PROTO_110 = TProtocol("/ipfs/bitswap/1.1.0")
PROTO_100 = TProtocol("/ipfs/bitswap/1.0.0")
PROTOCOLS = [PROTO_120, PROTO_110, PROTO_100]

MAX_MESSAGE = 4 * 1024 * 1024  # the spec's limit, also kubo's and Helia's
RECV_WINDOW = 4 * 1024 * 1024  # yamux receive window we grant on Bitswap streams
READ_CHUNK = 256 * 1024


def cid_prefix(cid: CID) -> bytes:
    """The v1.1 block prefix: CID version, codec, multihash type and length."""
    return b"".join(encode_varint(v) for v in (cid.version, cid.codec, SHA2_256, 32))


def cid_from_prefix(prefix: bytes, data: bytes) -> CID:
    """The CID a peer claims for ``data``; raises CIDError for hashes we cannot check."""
    version, pos = decode_varint(prefix, 0)
    codec, pos = decode_varint(prefix, pos)
    mh_type, pos = decode_varint(prefix, pos)
    if mh_type != SHA2_256:
        raise CIDError(f"block with unsupported multihash 0x{mh_type:x}")
    if version == 0:
        codec = DAG_PB
    return CID(version, codec, hashlib.sha256(data).digest())


def encode_message(msg: Message) -> bytes:
    body = msg.SerializeToString()
    return encode_varint(len(body)) + body


class MessageReader:
    """Length-prefixed Bitswap messages from a stream, read in big chunks (not byte by byte)."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._eof = False

    async def _fill(self, need: int) -> bool:
        while len(self._buf) < need and not self._eof:
            try:
                chunk = await self._stream.read(READ_CHUNK)
            except Exception:  # EOF, reset, closed connection: all end the stream here
                chunk = b""
            if not chunk:
                self._eof = True
            self._buf += chunk
        return len(self._buf) >= need

    async def read(self) -> Message | None:
        """The next message, or None at the end of the stream."""
        length = shift = pos = 0
        while True:
            if not await self._fill(pos + 1):
                return None
            byte = self._buf[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
            if pos > 5:
                raise ValueError("bitswap message length varint too long")
        if length > MAX_MESSAGE:
            raise ValueError(f"bitswap message of {length} bytes exceeds {MAX_MESSAGE}")
        if not await self._fill(pos + length):
            return None
        msg = Message()
        msg.ParseFromString(bytes(self._buf[pos : pos + length]))
        del self._buf[: pos + length]
        return msg


async def widen_receive_window(stream: INetStream, size: int = RECV_WINDOW) -> None:
    """Grant the sender a ``size`` yamux window on this stream at once (best effort).

    py-libp2p's yamux starts every stream at 256 KiB and its sender then polls every 10 ms
    for an update; auto-tuning grows the window only over many round trips, so a fresh
    stream moves ~25 MB/s. kubo, Helia and py-libp2p all accept the standard window update.
    Kept well under 16 MiB: a bigger frame makes py-libp2p drop the connection.
    """
    muxed = getattr(stream, "muxed_stream", None)
    if muxed is None or not hasattr(muxed, "target_recv_window"):
        return
    try:
        async with muxed.window_lock:
            delta = size - muxed.recv_window
            if delta <= 0:
                return
            muxed.recv_window += delta
            muxed.target_recv_window = max(muxed.target_recv_window, size)
        await muxed.send_window_update(delta)
    except Exception as e:
        log.debug("could not widen yamux window: %r", e)


async def close_stream(stream: INetStream, reset: bool = False) -> None:
    try:
        if reset:
            await stream.reset()
        else:
            await stream.close()
    except Exception:
        pass
