"""The ``pacswarm`` command: init, serve, verify, id, publish, gc, status, reset-db, cid.

Errors the user can fix (:class:`~pacswarm.errors.PacswarmError`) are printed as one line with
what to do next, and exit 2; ``verify`` exits 1 for a package that fails.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pacswarm import __version__
from pacswarm.config import Config, config_keys, load_config
from pacswarm.dbsync import reset_held
from pacswarm.errors import PacswarmError
from pacswarm.fastverify import FastPath, FastPlan
from pacswarm.gc import collect_offline, summary_lines
from pacswarm.ipfs.identity import load_or_create_identity, peer_id_of
from pacswarm.ipfs.unixfs import import_stream
from pacswarm.ipns.record import ipns_name, name_multihash
from pacswarm.node import initialise, resolve_mirrors, serve
from pacswarm.proxy import COMMAND_HEADER
from pacswarm.status import render_text
from pacswarm.verify import verify_signature

log = logging.getLogger("pacswarm")


def _node_flags(p: argparse.ArgumentParser) -> None:
    keys = ", ".join(config_keys())
    p.add_argument("--config", type=Path, help=f"TOML config file (keys: {keys})")
    p.add_argument("--listen", metavar="HOST:PORT", help="pacman-facing address (127.0.0.1:7878)")
    p.add_argument("--data-dir", type=Path, help="node state (/var/lib/pacswarm as root)")
    p.add_argument("--mirrorlist", type=Path, help="pacman mirrorlist to read mirrors from")
    p.add_argument("--gpgdir", type=Path, help="pacman keyring (/etc/pacman.d/gnupg)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--p2p-listen", action="append", metavar="MULTIADDR", help="libp2p listen address"
    )
    p.add_argument("--gateway-listen", metavar="HOST:PORT", help="trustless gateway (0.0.0.0:4080)")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="bootstrap peer")
    p.add_argument("--no-mdns", action="store_true", help="do not discover peers on the LAN")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacswarm", description="A verifying pacman cache that shares packages over IPFS."
    )
    parser.add_argument("--version", action="version", version=f"pacswarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the data directory and import the mirrorlist")
    _node_flags(init)
    srv = sub.add_parser("serve", help="run the node (runs init first if needed)")
    _node_flags(srv)
    ver = sub.add_parser("verify", help="check a package's signature like pacman-key -v")
    ver.add_argument("package", type=Path)
    ver.add_argument("--sig", type=Path, help="detached signature (default: PACKAGE.sig)")
    ver.add_argument("--gpgdir", type=Path, help="pacman keyring (/etc/pacman.d/gnupg)")
    ver.add_argument("--config", type=Path, help="TOML config file (for gpgdir)")
    ident = sub.add_parser(
        "id", help="print this node's libp2p peer ID, listen addresses and IPNS name"
    )
    _node_flags(ident)
    pub = sub.add_parser(
        "publish", help="make the running node build its repo folders and publish them now"
    )
    pub.add_argument("--config", type=Path, help="TOML config file (for listen)")
    pub.add_argument("--listen", metavar="HOST:PORT", help="the node's address (127.0.0.1:7878)")
    gc = sub.add_parser(
        "gc",
        help="evict what keep_versions and cache_max_size allow no more, and print what it frees",
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
    gc.add_argument("--config", type=Path, help="TOML config file (listen, data_dir, the rules)")
    gc.add_argument("--listen", metavar="HOST:PORT", help="the node's address (127.0.0.1:7878)")
    gc.add_argument("--data-dir", type=Path, help="node state, used when no node is running")
    stat = sub.add_parser("status", help="print the running node's status (its /status.json)")
    stat.add_argument("--config", type=Path, help="TOML config file (for listen)")
    stat.add_argument("--listen", metavar="HOST:PORT", help="the node's address (127.0.0.1:7878)")
    stat.add_argument("--json", action="store_true", help="print the JSON as the node sends it")
    reset = sub.add_parser(
        "reset-db",
        help="drop the held copies of repo dbs (all, or each REPO): the next -Sy fetches anew",
    )
    reset.add_argument("repos", nargs="*", metavar="REPO")
    reset.add_argument("--config", type=Path, help="TOML config file (for data_dir)")
    reset.add_argument("--data-dir", type=Path, help="node state (/var/lib/pacswarm as root)")
    cid = sub.add_parser("cid", help="print the IPFS CIDs of files (as ipfs add --cid-version=1)")
    cid.add_argument("files", type=Path, nargs="+")
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "listen": getattr(args, "listen", None),
        "data_dir": getattr(args, "data_dir", None),
        "mirrorlist": getattr(args, "mirrorlist", None),
        "gpgdir": getattr(args, "gpgdir", None),
        "log_level": getattr(args, "log_level", None),
        "p2p_listen": getattr(args, "p2p_listen", None),
        "gateway_listen": getattr(args, "gateway_listen", None),
        "bootstrap": getattr(args, "bootstrap", None),
        "mdns": False if getattr(args, "no_mdns", False) else None,
    }
    return load_config(args.config, overrides)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries under py-libp2p log every multiaddr decode and yamux frame at debug: that
    # drowns pacswarm's own debug lines (and the disk). Their warnings still show.
    for noisy in ("multiaddr", "libp2p", "async_service", "zeroconf"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


def cmd_init(config: Config) -> int:
    created, mirrors = initialise(config)
    state = "created" if created else "already initialised"
    print(f"{config.data_dir}: {state}; {len(mirrors)} mirror(s):")
    for m in mirrors:
        print(f"  Server = {m}")
    return 0


def cmd_serve(config: Config) -> int:
    mirrors = resolve_mirrors(config)
    asyncio.run(serve(config, mirrors))
    return 0


def cmd_verify(config: Config, package: Path, sig: Path | None) -> int:
    """pacman's verdict on ``package`` and its ``.sig``, naming the path that decided.

    The in-process path (:mod:`pacswarm.fastverify`) may only accept; whatever it declines or
    cannot verify goes to gpg, whose verdict is final, with the reason it was not in-process.
    """
    sig = sig or package.with_name(package.name + ".sig")
    try:
        signature = sig.read_bytes()
        if not package.is_file():
            raise FileNotFoundError(package)
    except OSError as e:
        print(f"{e.filename}: cannot read ({e.strerror or 'no such file'})", file=sys.stderr)
        return 1
    why_gpg = _in_process(config, package, signature)
    if why_gpg is None:
        return 0
    verdict = asyncio.run(verify_signature(config.gpgdir, package, signature))
    status = "OK" if verdict.ok else "FAILED"
    word = "verified" if verdict.ok else "refused"
    print(f"{package}: {status}: {word} by gpg: {verdict.reason} (not in-process: {why_gpg})")
    return 0 if verdict.ok else 1


def _in_process(config: Config, package: Path, signature: bytes) -> str | None:
    """``None`` after printing an in-process acceptance, else why gpg must decide."""
    if not getattr(config, "fast_verify", True):
        return "fast_verify is off"
    plan = FastPath(config.gpgdir).plan(signature)
    if not isinstance(plan, FastPlan):
        return plan.reason
    running = hashlib.new(plan.hash_name)
    try:
        with package.open("rb") as f:
            while chunk := f.read(1 << 20):
                running.update(chunk)
    except OSError as e:
        return f"cannot read the package ({e.strerror})"
    if not plan.accepts(running):
        return "the in-process check did not verify"
    print(f"{package}: OK: verified in-process ({plan.description})")
    return None


def cmd_id(config: Config) -> int:
    """The peer ID (creating the identity on first use, as init does) and the addresses.

    A running node writes the addresses it really listens on to ipfs/config.json; before the
    first start, the configured ones are shown.
    """
    initialise(config)
    peer_id = peer_id_of(config.data_dir / "ipfs" / "identity.key")
    print(f"peer ID: {peer_id}")
    addrs = [f"{a}/p2p/{peer_id}" for a in config.p2p_listen]
    try:
        info = json.loads((config.data_dir / "ipfs" / "config.json").read_text())
        if info.get("peer_id") == peer_id and info.get("addrs"):
            addrs = list(info["addrs"])
    except (OSError, ValueError):
        pass
    for addr in addrs:
        print(f"  {addr}")
    print(f"gateway: http://{config.gateway_listen}/ipfs/")
    key = load_or_create_identity(config.data_dir / "ipfs" / "identity.key")
    print(f"ipns: /ipns/{ipns_name(name_multihash(key.public_key))}")
    return 0


def _local_url(config: Config, path: str) -> str:
    """The node's pacman-facing URL as this machine reaches it (a wildcard -> loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        config.listen_host, config.listen_host
    )
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.listen_port}{path}"


def _no_node(config: Config, path: str) -> PacswarmError:
    return PacswarmError(
        f"no pacswarm node answers at {_local_url(config, path)}; start it with "
        "`pacswarm serve` (or `systemctl start pacswarm`), or pass the --listen/--config it "
        "runs with"
    )


def cmd_publish(config: Config) -> int:
    """Ask the running node (``POST /api/publish``) to publish its folders now."""
    result = _ask_node(config, "/api/publish", "publish")
    if result is None:
        raise _no_node(config, "/api/publish")
    print(f"published /ipns/{result['name']}")
    print(f"  root: /ipfs/{result['root']}")
    print(f"  sequence: {result['sequence']}")
    return 0


def _ask_node(config: Config, path: str, command: str) -> dict[str, Any] | None:
    """POST a control request to the running node; None when no node answers there."""
    url = _local_url(config, path)
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={COMMAND_HEADER: command}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=120) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace").strip()
        raise PacswarmError(f"the node at {url} refused: {detail or e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            return None
        raise PacswarmError(f"the node at {url} did not answer: {e.reason}") from None


def cmd_gc(config: Config, dry_run: bool) -> int:
    """Evict now: through the running node (``POST /api/gc``), else on the data dir.

    With the node stopped only the store changes; the node drops the blocks, announcements
    and folder links of what went when it next starts.
    """
    result = _ask_node(config, "/api/gc?dry_run=1" if dry_run else "/api/gc", "gc")
    if result is None:
        print(f"no node answers at {config.listen}: working on {config.data_dir} directly")
        result = collect_offline(config, dry_run).to_json()
    for line in summary_lines(result):
        print(line)
    return 0


def cmd_status(config: Config, raw: bool) -> int:
    """The status page's summary in the terminal, from the running node's ``/status.json``."""
    url = _local_url(config, "/status.json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(url, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise PacswarmError(f"the node at {url} answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError):
        raise _no_node(config, "/status.json") from None
    try:
        model = json.loads(body)
        text = body.decode() if raw else render_text(model)
    except (ValueError, KeyError, TypeError) as e:
        raise PacswarmError(
            f"{url} did not send a pacswarm status ({type(e).__name__}: {e}); "
            "is it a pacswarm node of this version?"
        ) from None
    print(text, end="")
    return 0


def cmd_reset_db(config: Config, repos: list[str]) -> int:
    """Forget the held dbs (and with them the rollback floor): the operator's way out when a
    bad db is held. Works whether the node runs or not; nothing else is touched."""
    db_dir = config.data_dir / "dbs"
    removed = reset_held(db_dir, repos)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        which = f" of {', '.join(repos)}" if repos else ""
        print(f"no held db copies{which} in {db_dir}")
    else:
        print("the next pacman -Sy fetches these dbs from the mirrors, whatever their dates")
    return 0


def cmd_cid(files: list[Path]) -> int:
    """One ``CID  FILE`` line per file, like sha256sum; the CID kubo would give the file."""
    status = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                result = import_stream(f)
        except OSError as e:
            print(f"{path}: cannot read ({e.strerror})", file=sys.stderr)
            status = 1
            continue
        print(f"{result.root}  {path}")
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cid":
        return cmd_cid(args.files)
    try:
        config = _config(args)
        _logging(config.log_level)
        if args.command == "init":
            return cmd_init(config)
        if args.command == "serve":
            return cmd_serve(config)
        if args.command == "id":
            return cmd_id(config)
        if args.command == "publish":
            return cmd_publish(config)
        if args.command == "gc":
            return cmd_gc(config, args.dry_run)
        if args.command == "status":
            return cmd_status(config, args.json)
        if args.command == "reset-db":
            return cmd_reset_db(config, args.repos)
        return cmd_verify(config, args.package, args.sig)
    except PacswarmError as e:
        print(f"pacswarm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
