"""Benchmark: the in-process signature path against gpg, on the same files, in one run.

Prints, for Ed25519 and RSA 4096 signatures with SHA-256 and SHA-512:

* the fast path's cost per package beyond the sha256 pass: ``plan()`` (cached trust) plus
  ``accepts()`` (copy of the running hash, trailer, public-key step), in ms;
* its cost per GB beyond the sha256 pass: 0 for SHA-256 (the running sha256 is reused), one
  more hash pass for SHA-512 (measured here as hashlib.sha512 over the file);
* gpg's ``--verify`` of the same file (pacswarm.verify.verify_signature): its CPU (children's
  rusage) and wall time per GB on a large file, its wall time per package on a tiny one, and
  its CPU per GB when fed through a pipe as the streaming check during a download does.

    PYTHONPATH=src .venv/bin/python bench/bench_fastverify.py [--size-mib 256] [--reps 3]

Everything lives in a temp dir; the gpg homedir's daemons are killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pacswarm.fastverify import FastPath, FastPlan
from pacswarm.verify import gpg_env, gpg_verify_argv, verdict_from_gpg, verify_signature

MiB = 1 << 20
GB = 1e9
_BATCH = ["--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]


def _gpg(home: Path, *args: str) -> bytes:
    argv = ["gpg", "--homedir", str(home), *_BATCH, *args]
    return subprocess.run(argv, capture_output=True, check=True, timeout=300).stdout


def _make_keys(home: Path) -> dict[str, str]:
    """An Ed25519 and an RSA 4096 signing key, generated in (so ultimately trusted by) ``home``."""
    home.mkdir(mode=0o700)
    keys = {}
    for name, algo in (("Ed25519", "ed25519"), ("RSA4096", "rsa4096")):
        uid = f"bench {name} <{name.lower()}@bench.test>"
        _gpg(home, "--quick-generate-key", uid, algo, "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-keys", uid).decode()
        keys[name] = next(ln.split(":")[9] for ln in listing.splitlines() if ln[:4] == "fpr:")
    return keys


def _write(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))
    return path


def _hash_file(name: str, path: Path) -> tuple[hashlib._Hash, float]:
    """A hash over ``path`` and the CPU seconds it took (the pass a download does anyway)."""
    h = hashlib.new(name)
    start = time.process_time()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h, time.process_time() - start


def _fast_ms(fast: FastPath, signature: bytes, running: hashlib._Hash, reps: int) -> float:
    """Mean CPU ms of plan + accepts per package, with the trust cache already built."""
    plan = fast.plan(signature)
    assert isinstance(plan, FastPlan) and plan.accepts(running), plan
    start = time.process_time()
    for _ in range(reps):
        plan = fast.plan(signature)
        assert isinstance(plan, FastPlan)
        if not plan.accepts(running):
            raise RuntimeError("fast path stopped accepting")
    return (time.process_time() - start) / reps * 1000


def _gpg_run(home: Path, path: Path, signature: bytes) -> tuple[float, float]:
    """(wall s, children's CPU s) of one gpg --verify of ``path``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    verdict = asyncio.run(verify_signature(home, path, signature))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not verdict.ok:
        raise RuntimeError(f"gpg refused the bench signature: {verdict}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _gpg_pipe_cpu(home: Path, path: Path, signature: bytes) -> float:
    """Children's CPU s of ``gpg --verify SIG -`` fed ``path`` through a pipe, as the
    streaming check (sigstream.py) does while a package downloads."""
    sig = path.with_name(path.name + ".sig")
    sig.write_bytes(signature)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        gpg_verify_argv(home, str(sig), "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gpg_env(),
    )
    assert proc.stdin is not None
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            proc.stdin.write(chunk)
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not verdict_from_gpg(out, err).ok:
        raise RuntimeError("gpg refused the bench signature through a pipe")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(root: Path, size: int, reps: int) -> None:
    home = root / "gnupg"
    keys = _make_keys(home)
    big, tiny = _write(root / "big.pkg", size), _write(root / "tiny.pkg", 1024)
    fast = FastPath(home)
    start = time.perf_counter()
    assert fast.enabled  # builds the trust cache: gpg --list-keys and --export, once
    print(f"trust cache build (2 keys; once per keyring change or hour): "
          f"{(time.perf_counter() - start) * 1000:.1f} ms")  # fmt: skip
    sha256_big = [_hash_file("sha256", big)[1] for _ in range(reps)]
    sha512_big = [_hash_file("sha512", big)[1] for _ in range(reps)]
    print(f"file: {size / MiB:.0f} MiB; sha256 pass {statistics.median(sha256_big) / size * GB:.2f}"
          f" CPU s/GB (done anyway for %SHA256SUM%)")  # fmt: skip
    print(
        f"{'signature':<18} {'fast ms/pkg':>11} {'fast s/GB':>10} {'gpg ms/pkg':>11}"
        f" {'gpg CPU s/GB':>13} {'gpg wall s/GB':>14} {'gpg pipe CPU s/GB':>18}"
    )
    for key_name, fpr in keys.items():
        for digest in ("SHA256", "SHA512"):
            sigs = {}
            for label, path in (("big", big), ("tiny", tiny)):
                sigs[label] = _gpg(home, "--digest-algo", digest, "--local-user", f"{fpr}!",
                                   "--detach-sign", "-o", "-", str(path))  # fmt: skip
            name = digest.lower()
            running, _ = _hash_file(name, tiny)
            per_pkg = _fast_ms(fast, sigs["tiny"], running, 2000)
            big_hash, _ = _hash_file(name, big)
            check = fast.plan(sigs["big"])
            assert isinstance(check, FastPlan) and check.accepts(big_hash)
            extra_gb = 0.0 if name == "sha256" else statistics.median(sha512_big) / size * GB
            gpg_tiny = statistics.median(_gpg_run(home, tiny, sigs["tiny"])[0] for _ in range(5))
            gpg_big = [_gpg_run(home, big, sigs["big"]) for _ in range(reps)]
            gpg_cpu = statistics.median(c for _, c in gpg_big) / size * GB
            gpg_wall = statistics.median(w for w, _ in gpg_big) / size * GB
            pipe = [_gpg_pipe_cpu(home, big, sigs["big"]) for _ in range(reps)]
            gpg_pipe = statistics.median(pipe) / size * GB
            print(
                f"{key_name + '/' + digest:<18} {per_pkg:>11.3f} {extra_gb:>10.2f}"
                f" {gpg_tiny * 1000:>11.1f} {gpg_cpu:>13.2f} {gpg_wall:>14.2f} {gpg_pipe:>18.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pacswarm-bench-fastverify-"))
    try:
        run(root, args.size_mib * MiB, args.reps)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(root / "gnupg"), "--kill", "all"],
                       capture_output=True, timeout=20, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
