"""The node's configuration tables: ``[swarm]``, ``[audit]``, ``[seed]`` and ``[ipns]``.

Each table is a frozen dataclass held by :class:`pacswarm.config.Config` (``config.swarm``,
``config.audit``, ``config.seed``, ``config.ipns``); the TOML keys have the fields' names.
Sizes are written as people write them (``"20 GiB"``, ``"512 KiB"``, ``"10 MB"`` or a plain
byte count), durations too (``"30s"``, ``"5m"``, ``"4h"``, ``"2d"`` or plain seconds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from pacswarm.errors import ConfigError

#: What a node tells its peers it holds (privacy, README "What a node reveals").
ANNOUNCE_ALL = "all"
ANNOUNCE_SEEDED = "seeded"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: object, key: str) -> int:
    """``"20 GiB"`` / ``"8 MiB"`` / ``"10 MB"`` / ``1048576`` -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f'{key} = {value!r}: expected a size such as "20 GiB" or a byte count')
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key} = {value}: a size cannot be negative")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f'{key} = {value!r}: expected a size such as "20 GiB", "512 KiB", "10 MB" '
            "or a byte count"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def parse_duration(value: object, key: str) -> float:
    """``"30s"`` / ``"5m"`` / ``"4h"`` / ``"2d"`` / ``300`` (seconds) -> seconds, > 0."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key} = {value!r}: a duration must be a positive number")
        return float(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f'{key} = {value!r}: expected a duration such as "30s", "5m", "4h", "2d" '
            "or a number of seconds"
        )
    return float(match.group(1)) * _DURATION_UNITS[unit]


@dataclass(frozen=True)
class SwarmConfig:
    """``[swarm]``: who this node talks to, what it tells them, what it gives them."""

    #: ``"all"``: announce every package this node verified (what makes a household's
    #: second machine fetch from the first); ``"seeded"``: only what it seeded or audited,
    #: so peers do not learn what this machine installed. It still serves and fetches.
    announce: str = ANNOUNCE_ALL
    #: Peer IDs of a private swarm; empty = any pacswarm peer found (mDNS, bootstrap).
    allowlist: tuple[str, ...] = ()
    #: Serve the gateway and Bitswap to anyone, not only this machine and swarm peers.
    serve_public: bool = False
    #: Bytes per second the gateway and Bitswap send to one peer (0 = no limit).
    peer_rate: int = 64 * 1024**2
    #: Requests (gateway) or files (Bitswap) one peer may have in flight at once.
    peer_concurrency: int = 8
    #: Seconds a peer may take to send its first bytes before the next source is asked.
    peer_first_byte: float = 2.0
    #: Verification failures after which a peer is ignored for ``strike_ban`` seconds.
    strikes: int = 3
    strike_ban: float = 3600.0
    #: Most announcements kept (sha256 -> CID -> peer rows) in the announcement cache.
    cache_entries: int = 200_000
    #: Seconds after which announcements of a peer not seen since are dropped.
    peer_expiry: float = 7 * 24 * 3600.0
    #: Seconds between inventory digests on gossipsub (a mismatch triggers a pull).
    digest_interval: float = 30.0


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: how often to check a random announced package of a random peer."""

    #: Audits per hour (0 = none). Each downloads one announced package from the peer that
    #: announced it and verifies it; a bad one strikes the peer.
    per_hour: float = 2.0
    #: Largest package audited (bytes), so an audit never eats a metered link.
    max_size: int = 64 * 1024**2


@dataclass(frozen=True)
class SeedConfig:
    """``[seed]``: downloading random packages from upstream for the swarm's sake."""

    #: Packages to seed per ``interval`` (0 = no seeding).
    random_packages: int = 0
    #: Seconds between seeding rounds.
    interval: float = 24 * 3600.0
    #: Most bytes seeding downloads per day (a metered link stays safe).
    daily_budget: int = 1024**3


@dataclass(frozen=True)
class IpnsConfig:
    """``[ipns]``: the record that publishes this node's repo folders under its IPNS name."""

    #: Seconds a record stays valid (its Validity): peers drop it after that, so a node
    #: that is off for longer leaves its name unresolvable until it is back.
    lifetime: float = 48 * 3600.0
    #: Seconds resolvers may cache the record before they look for a newer one.
    ttl: float = 300.0
    #: Seconds between republications of the current record (must be below ``lifetime``).
    republish: float = 4 * 3600.0
    #: False: never publish (the name exists, but nothing is announced under it).
    publish: bool = True


TABLE_KEYS: dict[str, set[str]] = {
    "swarm": {
        "announce",
        "allowlist",
        "serve_public",
        "peer_rate",
        "peer_concurrency",
        "peer_first_byte",
        "strikes",
        "strike_ban",
        "cache_entries",
        "peer_expiry",
        "digest_interval",
    },
    "audit": {"per_hour", "max_size"},
    "seed": {"random_packages", "interval", "daily_budget"},
    "ipns": {"lifetime", "ttl", "republish", "publish"},
}


def _seconds(value: object, key: str, *, zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        kind = "a number >= 0" if zero else "a positive number"
        raise ConfigError(f"{key} = {value!r}: expected {kind}")
    return float(value)  # type: ignore[arg-type]


def _count(value: object, key: str, *, zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        least = 0 if zero else 1
        raise ConfigError(f"{key} = {value!r}: expected a whole number >= {least}")
    return value


def _peer_ids(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of peer IDs (as `pacswarm id` prints them)")
    for peer in value:
        if not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{40,60}", peer):
            raise ConfigError(
                f"{key}: {peer!r} is not a peer ID; `pacswarm id` on that machine prints it "
                "(12D3KooW...)"
            )
    return tuple(value)


def _swarm(table: dict[str, Any], src: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "announce" in table:
        if table["announce"] not in (ANNOUNCE_ALL, ANNOUNCE_SEEDED):
            raise ConfigError(
                f'{src}.announce = {table["announce"]!r}: expected "all" (every verified '
                'package) or "seeded" (only what this node seeded or audited)'
            )
        out["announce"] = table["announce"]
    if "allowlist" in table:
        out["allowlist"] = _peer_ids(table["allowlist"], f"{src}.allowlist")
    if "serve_public" in table:
        if not isinstance(table["serve_public"], bool):
            raise ConfigError(f"{src}.serve_public must be true or false")
        out["serve_public"] = table["serve_public"]
    if "peer_rate" in table:
        out["peer_rate"] = parse_size(table["peer_rate"], f"{src}.peer_rate")
    for key in ("peer_concurrency", "strikes", "cache_entries"):
        if key in table:
            out[key] = _count(table[key], f"{src}.{key}", zero=False)
    for key in ("peer_first_byte", "strike_ban", "peer_expiry", "digest_interval"):
        if key in table:
            out[key] = _seconds(table[key], f"{src}.{key}")
    if out.get("peer_first_byte", 0) >= 8:
        raise ConfigError(
            f"{src}.peer_first_byte = {out['peer_first_byte']}: must stay well below pacman's "
            "10 s, or a silent peer makes pacman give up before a mirror takes over"
        )
    return out


def _audit(table: dict[str, Any], src: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "per_hour" in table:
        out["per_hour"] = _seconds(table["per_hour"], f"{src}.per_hour", zero=True)
    if "max_size" in table:
        out["max_size"] = parse_size(table["max_size"], f"{src}.max_size")
    return out


def _seed(table: dict[str, Any], src: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "random_packages" in table:
        out["random_packages"] = _count(table["random_packages"], f"{src}.random_packages")
    if "interval" in table:
        out["interval"] = _seconds(table["interval"], f"{src}.interval")
    if "daily_budget" in table:
        out["daily_budget"] = parse_size(table["daily_budget"], f"{src}.daily_budget")
    return out


def _ipns(table: dict[str, Any], src: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("lifetime", "ttl", "republish"):
        if key in table:
            out[key] = parse_duration(table[key], f"{src}.{key}")
    if "publish" in table:
        if not isinstance(table["publish"], bool):
            raise ConfigError(f"{src}.publish must be true or false")
        out["publish"] = table["publish"]
    return out


def _check_ipns(ipns: IpnsConfig, src: str) -> None:
    """Cross-key rule: a record must be republished before it expires."""
    if ipns.republish >= ipns.lifetime:
        raise ConfigError(
            f"{src}.republish = {ipns.republish:g} s is not below lifetime = "
            f"{ipns.lifetime:g} s: the record would expire before it is republished; "
            'shorten republish (e.g. "4h") or lengthen lifetime (e.g. "48h")'
        )


def apply_tables(current: dict[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """Validated replacements for ``Config.swarm/.audit/.seed/.ipns`` from TOML ``values``."""
    parsers = {"swarm": _swarm, "audit": _audit, "seed": _seed, "ipns": _ipns}
    changes: dict[str, Any] = {}
    for name, parse in parsers.items():
        if name not in values:
            continue
        table = values[name]
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}])")
        unknown = set(table) - TABLE_KEYS[name]
        if unknown:
            known = ", ".join(sorted(TABLE_KEYS[name]))
            raise ConfigError(
                f"{source}: unknown key(s) in [{name}]: {', '.join(sorted(unknown))}; "
                f"known: {known}"
            )
        changes[name] = replace(current[name], **parse(table, f"{source}: {name}"))
    if "ipns" in changes:
        _check_ipns(changes["ipns"], f"{source}: ipns")
    return changes


__all__ = [
    "ANNOUNCE_ALL",
    "ANNOUNCE_SEEDED",
    "AuditConfig",
    "IpnsConfig",
    "SeedConfig",
    "SwarmConfig",
    "apply_tables",
    "parse_duration",
    "parse_size",
]
