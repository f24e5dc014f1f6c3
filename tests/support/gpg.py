"""Thin wrappers around the real ``gpg`` binary for the test fixtures.

Why not python-gnupg or a pure-Python OpenPGP library: the fixtures must produce exactly what
Arch's tooling produces (detached binary signatures, certifications, pacman-key keyrings), and
the proxy is tested against the same gpg that pacman uses.  Every helper is bounded by a timeout
and every homedir we touch gets its gpg-agent killed, because agents outlive the test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GPG_TIMEOUT = 60.0

# gpg must never prompt: batch mode, no pinentry, no passphrase.
_BATCH = ["--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]


def gpg_env() -> dict[str, str]:
    """A C-locale environment so gpg's and pacman's messages are stable English text."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env.pop("GPG_AGENT_INFO", None)
    return env


def run_gpg(
    homedir: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run gpg against ``homedir``; raise with gpg's stderr on failure (never hide it)."""
    proc = subprocess.run(
        ["gpg", "--homedir", str(homedir), *_BATCH, *args],
        input=stdin,
        capture_output=True,
        timeout=GPG_TIMEOUT,
        env=gpg_env(),
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise RuntimeError(f"gpg {' '.join(args)} failed ({proc.returncode}): {err}")
    return proc


def make_homedir(path: Path) -> Path:
    """Create an empty GNUPGHOME with the 0700 mode gpg insists on."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def kill_agent(homedir: Path) -> None:
    """Stop every gpg daemon (agent, dirmngr, ...) of ``homedir``; harmless when none runs.

    Why: each GNUPGHOME gets its own agent, which otherwise keeps running after pytest exits.
    """
    if not homedir.exists():
        return
    subprocess.run(
        ["gpgconf", "--homedir", str(homedir), "--kill", "all"],
        capture_output=True,
        timeout=GPG_TIMEOUT,
        env=gpg_env(),
        check=False,
    )


def _faked(faked_time: int | None) -> list[str]:
    """gpg's clock set back to ``faked_time`` (epoch seconds), to make keys that expired."""
    # --ignore-time-conflict: keys made "now" (the test master) may then sign in the past.
    return (
        []
        if faked_time is None
        else ["--faked-system-time", str(faked_time), "--ignore-time-conflict"]
    )


def generate_key(
    homedir: Path, uid: str, *, expire: str = "never", faked_time: int | None = None
) -> str:
    """Generate an unprotected ed25519 signing key (fast, unlike RSA 4096); return its fpr.

    ``expire`` is gpg's expiry (``never``, ``1d``, ...), counted from ``faked_time`` if given:
    a key made ten days ago with ``1d`` is expired now, as an old packager key can be.
    """
    run_gpg(homedir, *_faked(faked_time), "--quick-generate-key", uid, "ed25519", "sign", expire)
    listing = run_gpg(homedir, "--with-colons", "--list-secret-keys", uid).stdout.decode()
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr":
            return fields[9]
    raise RuntimeError(f"no fingerprint for {uid!r} in:\n{listing}")


def certify(
    homedir: Path, signer_fpr: str, target_fpr: str, *, faked_time: int | None = None
) -> None:
    """Make ``signer`` certify ``target`` with an exportable signature (like Arch's master keys)."""
    run_gpg(
        homedir, *_faked(faked_time), "--default-key", signer_fpr, "--quick-sign-key", target_fpr
    )


def export_public(homedir: Path, fprs: list[str], dest: Path) -> Path:
    """Export public keys (with their certifications) in binary form for ``pacman-key --add``."""
    dest.write_bytes(run_gpg(homedir, "--export", *fprs).stdout)
    return dest


def detach_sign(
    homedir: Path, fpr: str, file: Path, sig_out: Path, *, faked_time: int | None = None
) -> None:
    """Write a binary detached signature, the format pacman expects in ``pkg.sig``."""
    # The trailing "!" forces exactly this key instead of letting gpg pick a subkey.
    run_gpg(
        homedir,
        *_faked(faked_time),
        "--local-user",
        f"{fpr}!",
        "--output",
        str(sig_out),
        "--detach-sign",
        str(file),
    )


def copy_homedir(src: Path, dest: Path) -> Path:
    """Copy a GNUPGHOME without its agent sockets (a copy is much faster than a fresh keyring)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
    dest.chmod(0o700)
    return dest
