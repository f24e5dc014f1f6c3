"""The in-process signature path against the real pacman and gpg, over crafted signatures.

For each case the same package and ``.sig`` go to: the real pacman (``pacman -U`` with
``LocalFileSigLevel = Required``, :func:`test_signature_rules.pacman_accepts`), gpg
(:func:`pacswarm.verify.verify_signature`), the fast path (:class:`FastPath`: plan, then
accepts over a hash of the file) and ``pacswarm verify``. The fast path must never accept
what pacman refuses, must accept the plain good cases (else it saves nothing), and
``pacswarm verify``'s verdict must be pacman's.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pacswarm import openpgp
from pacswarm.cli import cmd_verify
from pacswarm.config import Config
from pacswarm.fastverify import Decline, FastPath, FastPlan, catch_up
from pacswarm.verify import verify_signature
from tests.integration.test_signature_rules import pacman_accepts, pacswarm_verify
from tests.support import gpg
from tests.support.testrepo import Signer, TestRepo, trust_key

_NO_KEYSERVER = "keyserver hkp://127.0.0.1:9\n"
PAST = int(time.time()) - 10 * 86400


@dataclass(frozen=True)
class World:
    """Keys made once for the module, and a full-trust keyring that knows all of them."""

    repo: TestRepo
    keyring: Path  # template: copied for each test
    rsa: Signer
    expired: Signer
    revoked: Signer
    old: Signer  # made ten days ago, valid now: for a signature that expired


def _signer(repo: TestRepo, dest: Path, name: str, algo: str, faked: int | None) -> Signer:
    """A packager key certified (now) by the test master, optionally created in the past."""
    home = gpg.copy_homedir(repo.gnupghome, dest)
    uid = f"pacswarm {name} <{name}@pacswarm.test>"
    when = ["--faked-system-time", str(faked)] if faked else []
    try:
        gpg.run_gpg(home, *when, "--quick-generate-key", uid, algo, "sign", "never")
        listing = gpg.run_gpg(home, "--with-colons", "--list-keys", uid).stdout.decode()
        fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
        gpg.certify(home, repo.master_fpr, fpr)
        key_file = gpg.export_public(home, [fpr], dest.with_name(f"{name}.gpg"))
    finally:
        gpg.kill_agent(home)
    return Signer(homedir=home, fpr=fpr, key_file=key_file, sign_time=faked)


def _offline(gpgdir: Path) -> Path:
    with (gpgdir / "gpg.conf").open("a") as conf:
        conf.write(_NO_KEYSERVER)
    (gpgdir / "dirmngr.conf").write_text(_NO_KEYSERVER)
    return gpgdir


@pytest.fixture(scope="module")
def world(test_repo: TestRepo, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("fastverify")
    rsa = _signer(test_repo, base / "rsa", "rsa", "rsa3072", None)
    old = _signer(test_repo, base / "old", "old", "ed25519", PAST)
    revoked = _signer(test_repo, base / "revoked", "revoked", "ed25519", None)
    expired = test_repo.new_signer(base / "expired", "expired", expired=True)
    keyring = _offline(test_repo.make_pacman_gpgdir(base / "keyring"))
    for signer in (rsa, old, revoked, expired):
        trust_key(keyring, signer.key_file)
    revocation = (revoked.homedir / "openpgp-revocs.d" / f"{revoked.fpr}.rev").read_text()
    certificate = base / "revocation.asc"
    certificate.write_text(revocation.replace(":-----BEGIN", "-----BEGIN"))
    try:
        gpg.run_gpg(keyring, "--import", str(certificate))
        gpg.run_gpg(keyring, "--check-trustdb")
    finally:
        gpg.kill_agent(keyring)
    return World(test_repo, keyring, rsa, expired, revoked, old)


def _sign(home: Path, fpr: str, file: Path, *extra: str) -> bytes:
    try:
        out = gpg.run_gpg(home, *extra, "--local-user", f"{fpr}!", "--detach-sign", "-o", "-",
                          str(file))  # fmt: skip
    finally:
        gpg.kill_agent(home)
    return out.stdout


def _packager(w: World, file: Path, *extra: str) -> bytes:
    return _sign(w.repo.gnupghome, w.repo.packager_fpr, file, *extra)


def _rogue(w: World, file: Path) -> bytes:
    return _sign(w.repo.gnupghome, w.repo.rogue_fpr, file)


def _wrong_key(w: World, file: Path) -> bytes:
    """The rogue's signature relabelled as the packager's (issuer fingerprint and key id)."""
    rogue, packager = bytes.fromhex(w.repo.rogue_fpr), bytes.fromhex(w.repo.packager_fpr)
    return _rogue(w, file).replace(rogue, packager).replace(rogue[-8:], packager[-8:])


def _v3(w: World, file: Path) -> bytes:
    """The packager's signature values in a well-formed v3 packet (RFC 4880 5.2.2)."""
    sig = openpgp.parse_detached(_packager(w, file))
    (created,) = sig.subpackets(openpgp.SUB_CREATION_TIME)
    body = bytes([3, 5, 0]) + created.body + bytes.fromhex(w.repo.packager_fpr)[-8:]
    body += bytes([sig.pubkey_algo, sig.hash_algo]) + sig.left16
    for mpi in sig.mpis:
        body += (len(mpi) * 8 - (8 - mpi[0].bit_length())).to_bytes(2, "big") + mpi
    return bytes([0x88, len(body)]) + body


def _expired_signature(w: World, file: Path) -> bytes:
    when = ["--faked-system-time", str(PAST + 3600), "--default-sig-expire", "1d"]
    sig = _sign(w.old.homedir, w.old.fpr, file, *when)
    assert openpgp.parse_detached(sig).subpackets(openpgp.SUB_EXPIRATION_TIME)
    return sig


def _other_file(w: World, file: Path) -> bytes:
    return _packager(w, w.repo.packages["hello"].path)


Make = Callable[[World, Path], bytes]


def _pk(*extra: str) -> Make:
    """The test packager's (Ed25519) signature, with extra gpg options."""
    return lambda w, f: _packager(w, f, *extra)


def _by(who: str, *extra: str) -> Make:
    """A signature by one of the world's extra signers (``rsa``, ``expired``, ...)."""

    def make(w: World, f: Path) -> bytes:
        signer: Signer = getattr(w, who)
        when = ["--faked-system-time", str(signer.sign_time)] if who == "expired" else []
        return _sign(signer.homedir, signer.fpr, f, *when, *extra)

    return make


# case -> (keyring trust, how the .sig is made, pacman's verdict, fast path must accept)
CASES: dict[str, tuple[str, Make, bool, bool]] = {
    "ed25519-sha256": ("full", _pk("--digest-algo", "SHA256"), True, True),
    "ed25519-sha512": ("full", _pk("--digest-algo", "SHA512"), True, True),
    "rsa-sha256": ("full", _by("rsa", "--digest-algo", "SHA256"), True, True),
    "rsa-sha512": ("full", _by("rsa", "--digest-algo", "SHA512"), True, True),
    "wrong-data": ("full", _other_file, False, False),
    "wrong-key": ("full", _wrong_key, False, False),
    "unknown-key": ("full", _rogue, False, False),
    "marginal-trust": ("marginal", _pk(), False, False),
    "unknown-trust": ("unknown", _pk(), False, False),
    "expired-key": ("full", _by("expired"), False, False),
    "revoked-key": ("full", _by("revoked"), False, False),
    "expired-signature": ("full", _expired_signature, False, False),
    "good+rogue": ("full", lambda w, f: _packager(w, f) + _rogue(w, f), False, False),
    "good+good": ("full", lambda w, f: _packager(w, f) + _by("rsa")(w, f), True, False),
    "armored": ("full", _pk("--armor"), True, False),
    "v3": ("full", _v3, False, False),
    "text-signature": ("full", _pk("--textmode"), True, False),
    "critical-notation": ("full", _pk("--sig-notation", "!critical@example.org=x"), False, False),
    "truncated": ("full", lambda w, f: _packager(w, f)[:-7], False, False),
    # pacman-key --populate disables the keys of archlinux-revoked; gpgme reports it, pacman refuses
    "disabled-key": ("full-disabled", _pk(), False, False),
    "key-newer-than-signature": (
        "full",
        _by("rsa", "--faked-system-time", str(PAST), "--ignore-time-conflict"),
        False,
        False,
    ),
}

#: pacswarm refuses armored signatures unchecked (verify.signature_problem): the one place it
#: is knowingly stricter than pacman, documented there. Nothing here may be more lenient.
STRICTER = {"armored"}


def _keyring(w: World, trust: str, dest: Path) -> Path:
    if trust == "full":
        return gpg.copy_homedir(w.keyring, dest)
    if trust == "full-disabled":  # as pacman-key --populate disables a revoked key
        keyring = gpg.copy_homedir(w.keyring, dest)
        gpg.run_gpg(keyring, "--command-fd", "0", "--edit-key", w.repo.packager_fpr,
                    stdin=b"disable\nquit\n")  # fmt: skip
        return keyring
    return _offline(w.repo.make_pacman_gpgdir(dest, trust=trust))


def fast_accepts(gpgdir: Path, package: Path, signature: bytes) -> Decline | bool:
    """The fast path's decision: a Decline, False (planned, did not verify) or True."""
    plan = FastPath(gpgdir).plan(signature)
    if isinstance(plan, Decline):
        return plan
    return plan.accepts(hashlib.new(plan.hash_name, package.read_bytes()))


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_never_accepts_what_pacman_refuses(
    world: World, tmp_path: Path, case: str
) -> None:
    trust, make, accepted, fast_expected = CASES[case]
    pkg = world.repo.packages["libgreet"]
    d = tmp_path / "files"
    d.mkdir()
    package = Path(shutil.copy(pkg.path, d / pkg.filename))
    sig = d / f"{pkg.filename}.sig"
    sig.write_bytes(make(world, package))
    gpgdir = _keyring(world, trust, tmp_path / "keyring")
    try:
        pacman_ok, pacman_out = pacman_accepts(tmp_path / "pacman", gpgdir, package)
        gpg_verdict = asyncio.run(verify_signature(gpgdir, package, sig.read_bytes()))
        fast = fast_accepts(gpgdir, package, sig.read_bytes())
        cli = pacswarm_verify(package, sig, gpgdir)
    finally:
        gpg.kill_agent(gpgdir)
    detail = f"pacman: {pacman_out}\ngpg: {gpg_verdict}\nfast: {fast}\ncli: {cli.stdout}"
    assert pacman_ok is accepted, detail  # the reference is what it was when written
    assert not (fast is True and not pacman_ok), detail
    assert (fast is True) is fast_expected, detail
    if case in STRICTER:
        assert not gpg_verdict.ok and cli.returncode == 1, detail
        return
    assert gpg_verdict.ok is pacman_ok, detail
    assert (cli.returncode == 0) is pacman_ok, detail + cli.stderr
    assert ("verified in-process" in cli.stdout) is fast_expected, detail
    if gpg_verdict.ok and not fast_expected:
        assert "verified by gpg" in cli.stdout, detail


def test_revoking_a_key_reaches_a_built_trust_cache(world: World, tmp_path: Path) -> None:
    """The cache is rebuilt when the keyring changes: a key revoked after the first plan is
    declined on the next, with no restart."""
    pkg = world.repo.packages["libgreet"]
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    signer = _signer(world.repo, tmp_path / "late", "late", "ed25519", None)
    try:
        trust_key(gpgdir, signer.key_file)
        signature = _sign(signer.homedir, signer.fpr, pkg.path)
        fast = FastPath(gpgdir)
        plan = fast.plan(signature)
        assert isinstance(plan, FastPlan), plan
        assert plan.accepts(hashlib.sha256(pkg.path.read_bytes()))
        revocation = (signer.homedir / "openpgp-revocs.d" / f"{signer.fpr}.rev").read_text()
        certificate = tmp_path / "revocation.asc"
        certificate.write_text(revocation.replace(":-----BEGIN", "-----BEGIN"))
        gpg.run_gpg(gpgdir, "--import", str(certificate))
        again = fast.plan(signature)
    finally:
        gpg.kill_agent(gpgdir)
    assert isinstance(again, Decline), again
    assert "validity r" in again.reason


def test_signing_subkey_is_in_process_only_after_gpg_accepted_it(
    world: World, tmp_path: Path
) -> None:
    """A subkey's back-signature is gpg's to check: the first signature by a new signing
    subkey goes to gpg; once gpg accepted one (Verdict.signer), the next is in-process; a
    changed keyring forgets that."""
    pkg = world.repo.packages["libgreet"]
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    signer = _signer(world.repo, tmp_path / "sub", "sub", "ed25519", None)
    try:
        gpg.run_gpg(signer.homedir, "--quick-add-key", signer.fpr, "rsa2048", "sign", "never")
        listing = gpg.run_gpg(signer.homedir, "--with-colons", "--list-keys", signer.fpr).stdout
        fprs = [ln.split(":")[9] for ln in listing.decode().splitlines() if ln[:4] == "fpr:"]
        subkey = fprs[-1]
        key_file = gpg.export_public(signer.homedir, [signer.fpr], tmp_path / "sub.gpg")
        trust_key(gpgdir, key_file)
        (tmp_path / "files").mkdir()
        package = Path(shutil.copy(pkg.path, tmp_path / "files" / pkg.filename))
        signature = _sign(signer.homedir, subkey, package)
        package.with_name(f"{pkg.filename}.sig").write_bytes(signature)
        pacman_ok, pacman_out = pacman_accepts(tmp_path / "pacman", gpgdir, package)
        fast = FastPath(gpgdir)
        first = fast.plan(signature)
        verdict = asyncio.run(verify_signature(gpgdir, pkg.path, signature))
        fast.confirm(verdict)
        second = fast.plan(signature)
        trust_key(gpgdir, world.repo.rogue_key_file)  # a new keyring state
        third = fast.plan(signature)
    finally:
        gpg.kill_agent(gpgdir)
        gpg.kill_agent(signer.homedir)
    assert isinstance(first, Decline) and "subkey not yet confirmed" in first.reason, first
    assert verdict.ok and verdict.signer == subkey, verdict
    assert isinstance(second, FastPlan) and second.key == subkey, second
    assert second.accepts(hashlib.new(second.hash_name, package.read_bytes()))
    assert isinstance(third, Decline) and "subkey not yet confirmed" in third.reason, third
    assert pacman_ok, pacman_out  # what the fast path accepted, pacman accepts


@pytest.mark.parametrize(
    "line", ["trust-model always", "faked-system-time 20300101T000000", "ignore-time-conflict"]
)
def test_gpg_conf_time_or_trust_options_turn_the_fast_path_off(
    world: World, tmp_path: Path, line: str
) -> None:
    pkg = world.repo.packages["libgreet"]
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    with (gpgdir / "gpg.conf").open("a") as conf:
        conf.write(line + "\n")
    try:
        fast = FastPath(gpgdir)
        plan = fast.plan(pkg.sig_path.read_bytes())
        enabled = fast.enabled
        cli = pacswarm_verify(pkg.path, pkg.sig_path, gpgdir)
    finally:
        gpg.kill_agent(gpgdir)
    assert not enabled
    assert isinstance(plan, Decline) and "gpg.conf sets" in plan.reason, plan
    assert "verified in-process" not in cli.stdout, cli.stdout
    assert "not in-process: fast path off: gpg.conf sets" in cli.stdout, cli.stdout


def test_key_expiry_is_judged_now_even_mid_download(world: World, tmp_path: Path) -> None:
    """pacman judges expiry at check time: a key valid when the plan was made but expired when
    the last byte arrives is gpg's to refuse, and the cache drops it at its expiry."""
    pkg = world.repo.packages["libgreet"]
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    home = gpg.copy_homedir(world.repo.gnupghome, tmp_path / "soon")
    now = [time.time()]
    try:
        uid = "pacswarm soon <soon@pacswarm.test>"
        gpg.run_gpg(home, "--quick-generate-key", uid, "ed25519", "sign", "2d")
        listing = gpg.run_gpg(home, "--with-colons", "--list-keys", uid).stdout.decode()
        fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
        gpg.certify(home, world.repo.master_fpr, fpr)
        trust_key(gpgdir, gpg.export_public(home, [fpr], tmp_path / "soon.gpg"))
        signature = _sign(home, fpr, pkg.path)
        fast = FastPath(gpgdir, clock=lambda: now[0])
        plan = fast.plan(signature)
        running = hashlib.sha256(pkg.path.read_bytes())
        assert isinstance(plan, FastPlan) and plan.accepts(running), plan
        now[0] += 3 * 86400  # the download ends after the key expired
        late_accept = plan.accepts(running)
        late_plan = fast.plan(signature)
    finally:
        gpg.kill_agent(gpgdir)
        gpg.kill_agent(home)
    assert not late_accept
    assert isinstance(late_plan, Decline) and "expired" in late_plan.reason, late_plan


def test_sha512_hash_caught_up_from_the_file_accepts_as_a_whole_one(
    world: World, tmp_path: Path
) -> None:
    """A SHA-512 .sig arriving mid-download: the second hash, started from the first bytes of
    the temp file and fed the rest, gives the same verdict as one over the whole file."""
    pkg = world.repo.packages["bigpkg"]
    data = pkg.path.read_bytes()
    signature = _packager(world, pkg.path, "--digest-algo", "SHA512")
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    try:
        plan = FastPath(gpgdir).plan(signature)
    finally:
        gpg.kill_agent(gpgdir)
    assert isinstance(plan, FastPlan) and plan.hash_name == "sha512", plan
    half = len(data) // 2
    running = catch_up("sha512", pkg.path, half)
    running.update(data[half:])
    assert plan.accepts(running)
    assert plan.verdict().ok and plan.verdict().signer == world.repo.packager_fpr
    short = catch_up("sha512", pkg.path, half)
    short.update(data[half:-1])
    assert not plan.accepts(short)


@pytest.mark.parametrize("who", ["packager", "rsa"])
def test_no_single_byte_change_of_a_good_signature_is_accepted_unless_gpg_accepts(
    world: World, tmp_path: Path, who: str
) -> None:
    """Every byte of a good .sig flipped in turn: whatever the fast path accepts, gpg accepts
    too (gpg is asked only then). Every other change is a decline or a failed check."""
    pkg = world.repo.packages["libgreet"]
    signature = _packager(world, pkg.path) if who == "packager" else _by("rsa")(world, pkg.path)
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    running = hashlib.sha256(pkg.path.read_bytes())
    fast = FastPath(gpgdir)
    accepted: list[int] = []
    try:
        assert fast_accepts(gpgdir, pkg.path, signature) is True
        for i in range(len(signature)):
            damaged = bytearray(signature)
            damaged[i] ^= 0x41
            plan = fast.plan(bytes(damaged))
            if isinstance(plan, FastPlan) and plan.accepts(running):
                accepted.append(i)
                verdict = asyncio.run(verify_signature(gpgdir, pkg.path, bytes(damaged)))
                assert verdict.ok, f"byte {i}: fast path accepted, gpg: {verdict}"
    finally:
        gpg.kill_agent(gpgdir)
    assert len(accepted) < len(signature) // 4, accepted  # only bytes no check covers


@pytest.mark.parametrize("fast_verify", [True, False])
def test_fast_verify_false_sends_every_signature_to_gpg(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_verify: bool
) -> None:
    """``fast_verify = false`` (pacswarm.toml): the same verdict, always from gpg."""
    pkg = world.repo.packages["libgreet"]
    gpgdir = _keyring(world, "full", tmp_path / "keyring")
    config = cast(Config, SimpleNamespace(gpgdir=gpgdir, fast_verify=fast_verify))
    try:
        rc = cmd_verify(config, pkg.path, pkg.sig_path)
    finally:
        gpg.kill_agent(gpgdir)
    out = capsys.readouterr().out
    assert rc == 0, out
    if fast_verify:
        assert "verified in-process (Ed25519/SHA-256" in out, out
    else:
        assert "verified by gpg" in out and "not in-process: fast_verify is off" in out, out
