"""Which keys of the pacman keyring gpg itself would call valid, cached for the fast path.

Trust stays gpg's: this module computes none. It asks gpg once per keyring state for its
verdict on every key (``--with-colons --fixed-list-mode --list-keys``: validity ``f``/``u``,
disabled, expiry, creation, capabilities) and for the key material (``--export``), and keeps
both until the keyring, trustdb or gpg.conf changes (stat), a key expires, gpg's trustdb asks
for its next check, or an hour passes -- whichever is first, so a validity that changes with
time (a certification that expires) is never trusted for longer than that.

A signing *subkey* is trusted in-process only after one real gpg run under the same keyring
state accepted a signature by it (:meth:`TrustCache.confirm`): gpg also checks the subkey's
back-signature (cross-certification), which the listing does not show.

Off entirely (every lookup declines) when gpg.conf sets options under which the listing may
not match what ``gpg --verify`` decides: another trust model, a faked clock, ignored time
conflicts, extra keyrings, weak algorithms (:func:`gpg_conf_problem`).

:func:`parse_listing` and :func:`gpg_conf_problem` are pure; :class:`TrustCache` runs gpg.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pacswarm.openpgp import Unsupported, Verifier, parse_keys
from pacswarm.verify import gpg_env

#: However still the keyring, the cache is rebuilt this often (seconds).
MAX_AGE = 3600.0
#: After gpg failed to list the keyring, this long before it is asked again.
RETRY_AFTER = 60.0
GPG_LIST_TIMEOUT = 30.0

#: Files whose change is a new keyring state (any of them may be missing).
WATCHED = ("pubring.gpg", "pubring.kbx", "trustdb.gpg", "gpg.conf")

#: gpg.conf options under which the listing may not predict ``--verify`` (besides trust-model).
_UNSAFE_OPTIONS = frozenset(
    {
        "faked-system-time",
        "always-trust",
        "trusted-key",
        "allow-weak-digest-algos",
        "allow-weak-key-signatures",
        "weak-digest",
        "disable-pubkey-algo",
        "compliance",
        "rfc2440",
        "rfc4880",
        "rfc4880bis",
        "openpgp",
        "pgp6",
        "pgp7",
        "pgp8",
        "keyring",
        "primary-keyring",
        "no-default-keyring",
        "trustdb-name",
        "skip-verify",
    }
)


@dataclass(frozen=True)
class ListedKey:
    """One ``pub`` or ``sub`` record of gpg's colon listing."""

    fingerprint: str
    primary: str  # the primary key's fingerprint (its own for a primary)
    validity: str  # gpg's field 2: f, u, m, -, q, n, e, r, d, i, o
    created: int
    expires: int | None
    capabilities: str  # gpg's field 12 (lower case: this key's own usage; D: disabled)

    @property
    def is_subkey(self) -> bool:
        return self.fingerprint != self.primary

    @property
    def disabled(self) -> bool:
        return "D" in self.capabilities

    @property
    def can_sign(self) -> bool:
        return "s" in self.capabilities


@dataclass(frozen=True)
class Listing:
    keys: dict[str, ListedKey]
    trust_model: str | None  # the ``tru`` record's field 3: "1" is pgp
    next_check: int | None  # when gpg will recompute the trustdb


def parse_listing(text: str) -> Listing:
    """gpg's ``--with-colons --fixed-list-mode --list-keys`` output (gnupg doc/DETAILS)."""
    keys: dict[str, ListedKey] = {}
    trust_model: str | None = None
    next_check: int | None = None
    pending: list[str] | None = None  # the pub/sub record waiting for its fpr line
    primary = ""
    for line in text.splitlines():
        f = line.split(":")
        if f[0] == "tru" and len(f) > 4:
            trust_model = f[2]
            next_check = int(f[4]) if f[4].isdigit() and int(f[4]) > 1 else None
        elif f[0] in ("pub", "sub") and len(f) > 11:
            pending = f
        elif f[0] == "fpr" and pending is not None and len(f) > 9:
            fpr = f[9].upper()
            if pending[0] == "pub":
                primary = fpr
            caps = pending[11]
            if pending[0] == "sub" and primary in keys and keys[primary].disabled:
                caps += "D"  # a subkey of a disabled key is as disabled as its primary
            keys[fpr] = ListedKey(
                fingerprint=fpr,
                primary=primary,
                validity=pending[1],
                created=int(pending[5]) if pending[5].isdigit() else 0,
                expires=int(pending[6]) if pending[6].isdigit() else None,
                capabilities=caps,
            )
            pending = None
    return Listing(keys, trust_model, next_check)


def gpg_conf_problem(text: str) -> str | None:
    """Why the fast path must stay off under this gpg.conf, or ``None``."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, value = line.partition(" ")
        name = name.removeprefix("--").lower()
        if name == "trust-model" and value.strip().lower() != "pgp":
            return f"gpg.conf sets trust-model {value.strip()}"
        if name in _UNSAFE_OPTIONS or name.startswith("ignore-"):
            return f"gpg.conf sets {name}"
    return None


@dataclass(frozen=True)
class Trusted:
    """A key the fast path may accept a signature from, with its material ready."""

    listed: ListedKey
    verifier: Verifier
    valid_until: float | None  # the earlier expiry of the key and its primary


@dataclass
class _Built:
    stamp: tuple[object, ...]
    listing: Listing
    verifiers: dict[str, Verifier]
    by_key_id: dict[str, list[str]]
    rebuild_at: float
    confirmed: set[str] = field(default_factory=set)


class TrustCache:
    """gpg's view of one keyring, rebuilt when it may have changed (see the module doc)."""

    def __init__(self, gpgdir: Path, clock: Callable[[], float] = time.time) -> None:
        self.gpgdir = gpgdir
        self._clock = clock
        self._built: _Built | None = None
        self._off: str | None = None  # why every lookup declines now
        self._off_stamp: tuple[object, ...] | None = None  # the keyring state _off is about
        self._retry_at = 0.0
        self._lock = threading.RLock()

    # -- state ------------------------------------------------------------------------

    def _stamp(self) -> tuple[object, ...]:
        out: list[object] = []
        for name in WATCHED:
            try:
                st = os.stat(self.gpgdir / name)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

    def current(self) -> str | None:
        """Bring the cache up to date; ``None`` if usable, else why it is off.

        Thread-safe (the lead may plan off the event loop); a rebuild runs gpg twice, tens
        of milliseconds, once per keyring change, key expiry or hour.
        """
        with self._lock:
            now = self._clock()
            stamp = self._stamp()
            built = self._built
            if built is not None and built.stamp == stamp and now < built.rebuild_at:
                return None
            if built is None and stamp == self._off_stamp and now < self._retry_at:
                return self._off
            self._rebuild(now)
            return self._off

    def _rebuild(self, now: float) -> None:
        """List the keyring with gpg; the result counts only if no file changed meanwhile."""
        old, self._built = self._built, None
        self._retry_at = now + RETRY_AFTER
        for _attempt in range(2):  # the first listing may itself update a due trustdb
            before = self._stamp()
            self._off_stamp = before
            self._off = self._read_conf()
            if self._off is not None:
                return
            try:
                listing = self._gpg("--with-colons", "--fixed-list-mode", "--list-keys")
                export = self._gpg("--export-options", "export-minimal", "--export")
            except (OSError, subprocess.SubprocessError, RuntimeError) as e:
                self._off = f"gpg could not list the keyring: {e}"
                return
            if self._stamp() == before:
                self._off = self._install(
                    listing.decode(errors="replace"), export, before, now, old
                )
                return
        self._off = "the keyring changed while gpg listed it"
        self._retry_at = now + 1.0

    def _install(
        self, text: str, export: bytes, stamp: tuple[object, ...], now: float, old: _Built | None
    ) -> str | None:
        listing = parse_listing(text)
        if listing.trust_model != "1":
            return f"gpg's trustdb uses trust model {listing.trust_model}, not pgp"
        verifiers: dict[str, Verifier] = {}
        by_key_id: dict[str, list[str]] = {}
        for fpr, key in parse_keys(export).items():
            if fpr in listing.keys:
                try:
                    verifiers[fpr] = Verifier.of(key)
                except Unsupported:
                    continue
        for fpr in listing.keys:
            by_key_id.setdefault(fpr[-16:], []).append(fpr)
        due = [now + MAX_AGE]
        due += [k.expires for k in listing.keys.values() if k.expires and k.expires > now]
        if listing.next_check and listing.next_check > now:
            due.append(listing.next_check)
        built = _Built(stamp, listing, verifiers, by_key_id, min(due))
        if old is not None and old.stamp == stamp:
            built.confirmed = old.confirmed  # same keyring, only older: gpg's word still holds
        self._built = built
        return None

    def _read_conf(self) -> str | None:
        try:
            conf = (self.gpgdir / "gpg.conf").read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot read gpg.conf: {e}"
        return gpg_conf_problem(conf)

    def _gpg(self, *args: str) -> bytes:
        extra: list[str] = []
        if not os.access(self.gpgdir / "trustdb.gpg", os.W_OK):
            extra = ["--no-auto-check-trustdb", "--no-permission-warning"]  # as verify.py
        proc = subprocess.run(
            ["gpg", "--homedir", str(self.gpgdir), "--batch", "--no-tty", *extra, *args],
            capture_output=True,
            timeout=GPG_LIST_TIMEOUT,
            env=gpg_env(),
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace").strip()[-200:])
        return proc.stdout

    # -- lookups ----------------------------------------------------------------------

    def find(self, issuer: str) -> str | None:
        """The fingerprint for an issuer fingerprint or 16-digit key id, if exactly one."""
        built = self._built
        if built is None:
            return None
        issuer = issuer.upper()
        if len(issuer) == 40:
            return issuer if issuer in built.listing.keys else None
        found = built.by_key_id.get(issuer, [])
        return found[0] if len(found) == 1 else None

    def trusted(self, fpr: str, signed_at: int) -> Trusted | str:
        """The key for a signature made at ``signed_at``, or why gpg must judge it."""
        built, now = self._built, self._clock()
        if built is None:
            return self._off or "no trust cache"
        key = built.listing.keys.get(fpr)
        if key is None:
            return "key not in the keyring"
        verifier = built.verifiers.get(fpr)
        if verifier is None:
            return "key material not usable in-process"
        chain = {key.primary: built.listing.keys.get(key.primary), fpr: key}.values()
        for k in chain:
            problem = _key_problem(k, signed_at, now)
            if problem is not None:
                return problem
        expiries = [k.expires for k in chain if k is not None and k.expires is not None]
        if not key.can_sign:
            return "key has no signing capability"
        if key.is_subkey and fpr not in built.confirmed:
            return "subkey not yet confirmed by gpg under this keyring"
        return Trusted(key, verifier, min(expiries, default=None))

    def confirm(self, fpr: str) -> None:
        """gpg accepted a signature by ``fpr`` under the current keyring state."""
        built = self._built if self.current() is None else None
        if built is not None and fpr.upper() in built.listing.keys:
            built.confirmed.add(fpr.upper())

    @property
    def off_reason(self) -> str | None:
        return self._off


def _key_problem(key: ListedKey | None, signed_at: int, now: float) -> str | None:
    if key is None:
        return "primary key not listed"
    if key.validity not in ("f", "u"):
        return f"key validity {key.validity or '?'} (pacman needs full or ultimate)"
    if key.disabled:
        return "key disabled in the keyring"
    if key.expires is not None and key.expires <= now:
        return "key expired"
    if key.created > signed_at:
        return "key newer than the signature"
    return None


__all__ = ["ListedKey", "Listing", "TrustCache", "Trusted", "gpg_conf_problem", "parse_listing"]
