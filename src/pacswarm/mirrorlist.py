"""Reading pacman mirrorlists: the ``Server = URL`` lines, in order.

Pure text processing; the only I/O is :func:`read_mirrorlist`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pacswarm.errors import MirrorlistError


def parse_mirrorlist(text: str, source: str = "mirrorlist") -> list[str]:
    """Return the uncommented ``Server =`` URLs of a pacman mirrorlist, in file order.

    Duplicates are dropped (pacman would try them twice for nothing).
    """
    servers: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "Server":
            continue  # Include = and other directives do not name a mirror
        url = value.strip()
        if not url.startswith(("http://", "https://")):
            raise MirrorlistError(
                f"{source}:{number}: Server = {url!r} is not an http(s) URL; "
                "pacswarm can only proxy HTTP mirrors"
            )
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as e:
            raise MirrorlistError(f"{source}:{number}: Server = {url!r}: {e}") from None
        if url not in servers:
            servers.append(url)
    return servers


def _is_loopback(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def points_at_self(url: str, listen_host: str, listen_port: int) -> bool:
    """True when ``url`` is this node's own address: using it upstream would loop forever."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port != listen_port:
        return False
    host = parts.hostname or ""
    return host == listen_host or (_is_loopback(host) and _is_loopback(listen_host or "0.0.0.0"))


def usable_mirrors(urls: list[str], listen_host: str, listen_port: int) -> list[str]:
    """Drop the entries that point back at this node (pacman.conf often lists it first)."""
    return [u for u in urls if not points_at_self(u, listen_host, listen_port)]


def read_mirrorlist(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise MirrorlistError(f"cannot read mirrorlist {path}: {e.strerror}") from None
    return parse_mirrorlist(text, str(path))


def mirror_url(template: str, repo: str, arch: str, filename: str) -> str:
    """Expand a ``Server`` template for one file, as pacman does."""
    base = template.replace("$repo", repo).replace("$arch", arch).rstrip("/")
    return f"{base}/{filename}"
