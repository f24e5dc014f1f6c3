"""Configuration: one TOML file plus command-line flags, validated into a frozen dataclass.

Nothing here reads the environment at import time; :func:`load_config` is called once by the
CLI and the resulting :class:`Config` is passed explicitly to whatever needs it.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pacswarm.config_tables import (
    TABLE_KEYS,
    AuditConfig,
    IpnsConfig,
    SeedConfig,
    SwarmConfig,
    apply_tables,
    parse_size,
)
from pacswarm.errors import ConfigError
from pacswarm.evict import SizeCap

DEFAULT_PORT = 7878
DEFAULT_MIRRORLIST = Path("/etc/pacman.d/mirrorlist")
DEFAULT_GPGDIR = Path("/etc/pacman.d/gnupg")
#: Used when there is no mirrorlist to import: Arch's own geo-balanced mirror.
DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com/$repo/os/$arch"
#: No bootstrap peer by default: a node finds pacswarm peers on its LAN (mDNS) and dials
#: nothing on the internet until the user lists peers (README: "Joining the public DHT").
DEFAULT_BOOTSTRAP: tuple[str, ...] = ()
#: pacman aborts a transfer below 1 byte/s for 10 s; the window must end well before that.
MAX_VERIFY_WINDOW = 8.0
#: The default cache cap: a tenth of the cache's filesystem, never more than 20 GiB, so a
#: laptop's disk stays usable (a full Arch desktop upgrade is ~1-2 GiB of packages).
DEFAULT_CACHE_MAX_SIZE = SizeCap(fraction=0.10, ceiling=20 << 30)


def default_data_dir() -> Path:
    """``/var/lib/pacswarm`` for root (the system service), the XDG data dir otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/pacswarm")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pacswarm"


@dataclass(frozen=True)
class Config:
    """Every setting of a node. Keys of the TOML file have the same names as these fields."""

    #: Where pacman connects. Loopback by default: the proxy is for this machine's pacman.
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    #: Node state: imported mirrorlist, repo dbs, package cache, metadata.
    data_dir: Path = field(default_factory=default_data_dir)
    #: Imported by ``pacswarm init``; given explicitly (flag or key) it is read on every start.
    mirrorlist: Path = DEFAULT_MIRRORLIST
    mirrorlist_explicit: bool = False
    #: Explicit mirror URLs (with ``$repo``/``$arch``); when set, the mirrorlist is not used.
    mirrors: tuple[str, ...] = ()
    #: The pacman keyring whose trust decisions we copy.
    gpgdir: Path = DEFAULT_GPGDIR
    #: Seconds to establish a connection to a mirror before trying the next one.
    connect_timeout: float = 5.0
    #: Seconds without progress before a download moves to the next mirror. pacman gives up
    #: after 10 s below 1 byte/s, so the switch (plus the new connection) must fit well inside.
    stall_timeout: float = 4.0
    #: Bytes per second below which a transfer counts as stalled (slow-retrieval attack).
    min_speed: int = 4096
    #: Seconds a failing mirror is skipped before it is tried again.
    mirror_penalty: float = 120.0
    #: Seconds after pacman's request during which it receives no unverified byte: a source
    #: that fails verification inside it is replaced without pacman noticing. 0 turns it off
    #: (stream at once, with the hold-back). Measured (bench/bench_window.py): the window
    #: delays only the first byte, by at most its length (total time unchanged); at 5 s a
    #: bad source is replaced unseen for files up to ~10 MB at 2 MB/s, ~100 MB at 20 MB/s,
    #: and 5 s of pacman's 10 s low-speed limit remain for a switch after the window.
    verify_window: float = 5.0
    #: A repo db whose contents are older than this many seconds is reported as possibly
    #: frozen (a mirror replaying an old but valid state). Arch updates core daily.
    db_freeze_after: float = 7 * 24 * 3600.0
    log_level: str = "info"
    #: Decide the common signatures (one v4 RSA/Ed25519 signature, SHA-256/512, by a key the
    #: keyring fully trusts) in-process from the download's running hash instead of making
    #: gpg read the package again. It only ever accepts: anything else still goes to gpg,
    #: whose verdict is final. False: every signature goes to gpg.
    fast_verify: bool = True
    #: Versions of each package (same repo, arch, name) kept in the cache, newest by vercmp.
    keep_versions: int = 3
    #: Most bytes the package cache holds; least recently served packages go beyond it.
    cache_max_size: SizeCap = DEFAULT_CACHE_MAX_SIZE
    #: libp2p listen multiaddrs (TCP; Noise + Yamux).
    p2p_listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    #: Peer-facing IPFS Trustless Gateway (HTTP): only /ipfs/<cid> is reachable there.
    gateway_host: str = "0.0.0.0"
    gateway_port: int = 4080
    #: Peers dialled at start to join the network (multiaddrs with /p2p/<peer id>).
    bootstrap: tuple[str, ...] = DEFAULT_BOOTSTRAP
    #: Find other nodes on the LAN by multicast DNS.
    mdns: bool = True
    #: The ``[swarm]``, ``[audit]``, ``[seed]`` and ``[ipns]`` tables
    #: (:mod:`pacswarm.config_tables`).
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    ipns: IpnsConfig = field(default_factory=IpnsConfig)

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def gateway_listen(self) -> str:
        return f"{self.gateway_host}:{self.gateway_port}"


_TOML_KEYS = {
    "listen",
    "data_dir",
    "mirrorlist",
    "mirrors",
    "gpgdir",
    "connect_timeout",
    "stall_timeout",
    "min_speed",
    "mirror_penalty",
    "verify_window",
    "db_freeze_after",
    "log_level",
    "fast_verify",
    "keep_versions",
    "cache_max_size",
    "p2p_listen",
    "gateway_listen",
    "bootstrap",
    "mdns",
    *TABLE_KEYS,
}


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{key} = {value!r}: expected HOST:PORT, for example 127.0.0.1:7878")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key} = {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key} = {value!r}: port must be 0..65535")
    return host, port


def _positive(values: dict[str, Any], key: str) -> float:
    value = values[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{key} = {value!r}: expected a positive number of seconds")
    return float(value)


_SHARE = re.compile(r"^\s*([0-9.]+)\s*%\s*(?:up to\s+(.+?))?\s*$", re.IGNORECASE)


def parse_cache_max_size(value: object, key: str = "cache_max_size") -> SizeCap:
    """``"20 GiB"``, ``"8 MiB"``, a byte count, ``"10%"`` or ``"10% up to 20 GiB"``.

    A share is of the filesystem holding the cache, resolved when eviction runs.
    """
    share = _SHARE.match(value) if isinstance(value, str) else None
    if share is not None:
        try:
            percent = float(share.group(1))
        except ValueError:
            percent = math.nan
        if not 0 < percent <= 100:
            raise ConfigError(
                f"{key} = {value!r}: a share of the filesystem must be above 0% and at most 100%"
            )
        ceiling = None if share.group(2) is None else _positive_size(share.group(2), key)
        return SizeCap(fraction=percent / 100, ceiling=ceiling)
    return SizeCap(bytes=_positive_size(value, key))


def _positive_size(value: object, key: str) -> int:
    size = parse_size(value, key)
    if size <= 0:
        raise ConfigError(
            f'{key} = {value!r}: the cache needs room for at least one package; use "20 GiB", '
            '"10%" or a byte count above 0'
        )
    return size


def _cache_changes(values: dict[str, Any], source: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "keep_versions" in values:
        keep = values["keep_versions"]
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(
                f"{source}: keep_versions = {keep!r}: expected a whole number of versions, 1 "
                "or more (pacman needs the installed version to downgrade or reinstall)"
            )
        changes["keep_versions"] = keep
    if "cache_max_size" in values:
        changes["cache_max_size"] = parse_cache_max_size(
            values["cache_max_size"], f"{source}: cache_max_size"
        )
    return changes


def _apply(config: Config, values: dict[str, Any], source: str) -> Config:
    """Validate ``values`` (from TOML or flags) and return ``config`` updated with them."""
    unknown = set(values) - _TOML_KEYS
    if unknown:
        known = ", ".join(sorted(_TOML_KEYS))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
    changes: dict[str, Any] = {}
    if "listen" in values:
        changes["listen_host"], changes["listen_port"] = parse_listen(str(values["listen"]))
    for key in ("data_dir", "gpgdir"):
        if key in values:
            if not isinstance(values[key], str | Path) or not str(values[key]):
                raise ConfigError(f"{source}: {key} must be a directory path")
            changes[key] = Path(values[key]).expanduser()
    if "mirrorlist" in values:
        if not isinstance(values["mirrorlist"], str | Path) or not str(values["mirrorlist"]):
            raise ConfigError(f"{source}: mirrorlist must be a file path")
        changes["mirrorlist"] = Path(values["mirrorlist"]).expanduser()
        changes["mirrorlist_explicit"] = True
    if "mirrors" in values:
        mirrors = values["mirrors"]
        if not isinstance(mirrors, list | tuple) or not all(isinstance(m, str) for m in mirrors):
            raise ConfigError(f"{source}: mirrors must be a list of URL strings")
        for url in mirrors:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{source}: mirror {url!r} must start with http:// or https://")
        changes["mirrors"] = tuple(mirrors)
    for key in ("connect_timeout", "stall_timeout", "mirror_penalty", "db_freeze_after"):
        if key in values:
            changes[key] = _positive(values, key)
    if "verify_window" in values:
        window = values["verify_window"]
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not 0 <= window < MAX_VERIFY_WINDOW
        ):
            raise ConfigError(
                f"{source}: verify_window = {window!r}: expected seconds from 0 (off) to "
                f"below {MAX_VERIFY_WINDOW:g}; pacman gives up on a transfer that sends "
                "nothing for 10 s"
            )
        changes["verify_window"] = float(window)
    if "min_speed" in values:
        if not isinstance(values["min_speed"], int) or values["min_speed"] < 0:
            raise ConfigError(f"{source}: min_speed must be a whole number of bytes per second")
        changes["min_speed"] = values["min_speed"]
    changes.update(_p2p_changes(values, source))
    changes.update(_cache_changes(values, source))
    current = {
        "swarm": config.swarm,
        "audit": config.audit,
        "seed": config.seed,
        "ipns": config.ipns,
    }
    changes.update(apply_tables(current, values, source))
    if "fast_verify" in values:
        if not isinstance(values["fast_verify"], bool):
            raise ConfigError(f"{source}: fast_verify must be true or false")
        changes["fast_verify"] = values["fast_verify"]
    if "log_level" in values:
        level = str(values["log_level"]).lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"{source}: log_level must be debug, info, warning or error")
        changes["log_level"] = level
    return replace(config, **changes)


def _multiaddrs(values: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = values[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of multiaddrs")
    for addr in value:
        if not addr.startswith("/"):
            raise ConfigError(
                f"{source}: {key} entry {addr!r} is not a multiaddr "
                "(expected something like /ip4/0.0.0.0/tcp/4001)"
            )
    return tuple(value)


def _p2p_changes(values: dict[str, Any], source: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in ("p2p_listen", "bootstrap"):
        if key in values:
            changes[key] = _multiaddrs(values, key, source)
    if "bootstrap" in changes:
        for addr in changes["bootstrap"]:
            if "/p2p/" not in addr:
                raise ConfigError(f"{source}: bootstrap peer {addr!r} lacks /p2p/<peer id>")
    if "gateway_listen" in values:
        host, port = parse_listen(str(values["gateway_listen"]), "gateway_listen")
        changes["gateway_host"], changes["gateway_port"] = host, port
    if "mdns" in values:
        if not isinstance(values["mdns"], bool):
            raise ConfigError(f"{source}: mdns must be true or false")
        changes["mdns"] = values["mdns"]
    return changes


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if given), then flag ``overrides``."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            msg = f"config file {path} does not exist; create it or drop --config"
            raise ConfigError(msg) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        config = _apply(config, values, str(path))
    if overrides:
        config = _apply(config, {k: v for k, v in overrides.items() if v is not None}, "flags")
    if config.stall_timeout >= 10:
        raise ConfigError(
            f"stall_timeout = {config.stall_timeout}: must stay below pacman's 10 s "
            "low-speed limit, or pacman gives up before pacswarm switches mirrors"
        )
    return config


def config_keys() -> list[str]:
    """The documented TOML keys (for ``--help`` and the README); ``table.key`` in tables."""
    flat = _TOML_KEYS - set(TABLE_KEYS)
    tables = {f"{name}.{key}" for name, keys in TABLE_KEYS.items() for key in keys}
    return sorted(flat | tables)


__all__ = ["Config", "config_keys", "default_data_dir", "load_config", "parse_listen"]
