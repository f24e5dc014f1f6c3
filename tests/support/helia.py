"""A real Helia (JS IPFS) peer in a child process, for interop tests.

``tests/interop/helia/helia_peer.mjs`` speaks JSON lines on stdin/stdout; :class:`HeliaPeer`
drives it. Every call is bounded by a timeout, and :meth:`HeliaPeer.stop` kills the child's whole
process group, so a wedged Node process never outlives its test.

Set-up (once, needs Node >= 20 and the npm registry)::

    npm ci --prefix tests/interop/helia --no-audit --no-fund
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

HELIA_DIR = Path(__file__).resolve().parent.parent / "interop" / "helia"
SCRIPT = "helia_peer.mjs"
MIN_NODE_MAJOR = 20
# What helia_peer.mjs imports: all must be installed for the peer to start.
_REQUIRED_MODULES = (
    "helia",
    "@helia/unixfs",
    "@helia/bitswap",
    "@helia/libp2p",
    "@helia/trustless-gateway-client",
    "@helia/fallback-router",
    "@libp2p/tcp",
    "@libp2p/gossipsub",
    "@chainsafe/libp2p-noise",
    "@chainsafe/libp2p-yamux",
)


def node_major_version() -> int | None:
    """The major version of ``node`` on PATH, or None if there is none (or it does not run)."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


@functools.cache
def helia_available() -> bool:
    """True if the Helia peer can run: node >= 20 and ``npm ci`` done in ``HELIA_DIR``."""
    modules = HELIA_DIR / "node_modules"
    if not all((modules / name / "package.json").is_file() for name in _REQUIRED_MODULES):
        return False
    major = node_major_version()
    return major is not None and major >= MIN_NODE_MAJOR


def unavailable_reason() -> str:
    major = node_major_version()
    if major is None:
        return "helia: no working `node` on PATH (need Node >= 20)"
    if major < MIN_NODE_MAJOR:
        return f"helia: node {major} is too old (need >= {MIN_NODE_MAJOR})"
    return f"helia: run `npm ci --prefix {HELIA_DIR}` first (node_modules missing)"


@dataclass(frozen=True)
class PubsubMessage:
    topic: str
    sender: str | None  # peer id; None for an unsigned message
    data: bytes


class HeliaError(RuntimeError):
    """The Helia peer answered with an error, timed out, or died."""


class HeliaPeer:
    """``node helia_peer.mjs``: one Helia node on TCP 127.0.0.1, driven by JSON lines.

    ``gateways``: trustless gateway URLs the node's own block fetching may also use (besides
    bitswap); :meth:`cat_gateway` never needs them, it uses a private gateway-only node.
    """

    def __init__(
        self,
        *,
        gateways: tuple[str, ...] = (),
        listen: str = "/ip4/127.0.0.1/tcp/0",
        log_path: Path | None = None,
        call_timeout: float = 30.0,
    ) -> None:
        self.gateways = gateways
        self.listen = listen
        self.log_path = log_path
        self.call_timeout = call_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._lock = threading.Lock()
        self._seq = 0
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        node = shutil.which("node") or "node"
        args = [node, SCRIPT, "--listen", self.listen]
        for url in self.gateways:
            args += ["--gateway", url]
        return args

    def start(self, timeout: float = 30.0) -> HeliaPeer:
        if self.proc is not None:
            raise HeliaError("already started")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=HELIA_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: stop() kills all of it
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, name="helia-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="helia-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            answer = self._call({"cmd": "id"}, timeout)
        except BaseException:
            self.stop()
            raise
        self.peer_id = str(answer["peer_id"])
        self.addrs = [str(a) for a in answer["addrs"]]
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask it to quit, then SIGKILL its process group; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self._call({"cmd": "quit"}, timeout)
                proc.wait(timeout=timeout)
            except (HeliaError, subprocess.TimeoutExpired, OSError):
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader: always
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self.proc = None
        return proc.returncode

    def __enter__(self) -> HeliaPeer:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        """The last lines the peer wrote to stderr."""
        return "".join(self._stderr)

    # -- commands ---------------------------------------------------------------------------

    def id(self) -> dict[str, Any]:
        return self._call({"cmd": "id"})

    @property
    def multiaddr(self) -> str:
        """Its first listen address, with ``/p2p/<peer id>``."""
        if not self.addrs:
            raise HeliaError("not started")
        return self.addrs[0]

    def add(self, path: Path | str, timeout: float | None = None) -> str:
        """Import a file as kubo does (CIDv1, raw leaves, 256 KiB, balanced 174); its CID."""
        return str(self._call({"cmd": "add", "path": str(path)}, timeout)["cid"])

    def dial(self, addr: str, timeout: float = 15.0) -> str:
        """Connect to a multiaddr (with ``/p2p/``); the remote peer id."""
        return str(self._call({"cmd": "dial", "addr": addr}, timeout)["peer_id"])

    def peers(self) -> list[dict[str, str]]:
        return list(self._call({"cmd": "peers"})["peers"])

    def cat(self, cid: str, out: Path | str, timeout: float = 30.0) -> int:
        """Fetch a UnixFS file over bitswap from connected peers into ``out``; its size."""
        req = {"cmd": "cat", "cid": cid, "out": str(out), "timeout_ms": int(timeout * 1000)}
        return int(self._call(req, timeout + 5)["size"])

    def cat_gateway(self, cid: str, url: str, out: Path | str, timeout: float = 30.0) -> int:
        """Fetch a UnixFS file from one trustless HTTP gateway only (no bitswap); its size."""
        req = {
            "cmd": "cat_gateway",
            "cid": cid,
            "url": url,
            "out": str(out),
            "timeout_ms": int(timeout * 1000),
        }
        return int(self._call(req, timeout + 5)["size"])

    def subscribe(self, topic: str) -> None:
        """Join a gossipsub topic; messages then queue up for :meth:`messages`."""
        self._call({"cmd": "subscribe", "topic": topic})

    def subscribers(self, topic: str) -> list[str]:
        """Peer ids of connected peers known to be subscribed to ``topic``."""
        return [str(p) for p in self._call({"cmd": "subscribers", "topic": topic})["peers"]]

    def publish(self, topic: str, data: bytes) -> list[str]:
        """Publish on gossipsub; the peer ids it was sent to (may be empty)."""
        req = {"cmd": "publish", "topic": topic, "data_b64": base64.b64encode(data).decode()}
        return [str(p) for p in self._call(req)["recipients"]]

    def messages(self) -> list[PubsubMessage]:
        """Gossipsub messages received since the last call, oldest first."""
        return [
            PubsubMessage(str(m["topic"]), m["from"], base64.b64decode(m["data_b64"]))
            for m in self._call({"cmd": "messages"})["messages"]
        ]

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise HeliaError("helia peer not started")
        if proc.poll() is not None:
            raise HeliaError(f"helia peer exited (code {proc.returncode}):\n{self.log()}")
        limit = self.call_timeout if timeout is None else timeout
        with self._lock:
            self._seq += 1
            seq = self._seq
            line = json.dumps({**req, "seq": seq}) + "\n"
            try:
                proc.stdin.write(line.encode())
                proc.stdin.flush()
            except OSError as e:
                raise HeliaError(f"helia peer is gone ({e}):\n{self.log()}") from None
            while True:
                try:
                    answer = self._answers.get(timeout=limit)
                except queue.Empty:
                    raise HeliaError(
                        f"helia {req['cmd']!r} timed out after {limit} s:\n{self.log()}"
                    ) from None
                if answer is None:
                    raise HeliaError(
                        f"helia peer exited (code {proc.poll()}) during {req['cmd']!r}:\n"
                        + self.log()
                    )
                if answer.get("seq") not in (seq, None):
                    continue  # the late answer of an earlier call that timed out
                if "error" in answer:
                    raise HeliaError(f"helia {req['cmd']!r}: {answer['error']}")
                return answer

    def _read_stdout(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        try:
            for raw in proc.stdout:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    self._stderr.append(f"[stdout, not JSON] {raw.decode(errors='replace')}")
                    continue
                if isinstance(obj, dict):
                    self._answers.put(obj)
        except (OSError, ValueError):
            pass
        finally:
            self._answers.put(None)

    def _read_stderr(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        sink = self.log_path.open("ab") if self.log_path is not None else None
        try:
            for raw in proc.stderr:
                self._stderr.append(raw.decode(errors="replace"))
                if sink is not None:
                    sink.write(raw)
                    sink.flush()
        except (OSError, ValueError):
            pass
        finally:
            if sink is not None:
                sink.close()
