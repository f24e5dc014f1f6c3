"""The in-process signature path inside a real node, driven by the real pacman.

What a user would notice: packages install exactly as before (the fast path only accepts
what gpg would), a signature it cannot be sure of still gets gpg's verdict, and the node's
``/metrics`` says who decided each one (the bench reads the same counter).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.integration.test_metrics import scrape, value
from tests.support import gpg
from tests.support.dbedit import strip_pgpsig_everywhere
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

CHECKS = "pacswarm_signature_checks_total"


def test_a_good_package_is_decided_in_process_and_by_gpg_only_when_switched_off(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    pkg = test_repo.packages["libgreet"]
    for name, extra, path in (
        ("fast", "", "in-process"),
        ("off", "fast_verify = false\n", "gpg"),
    ):
        node = make_node([mirror.url_template], name=name, extra_config=extra)
        pacman = make_pacman([node.url_template], name=f"pacman-{name}")
        assert pacman.run("-Sy").returncode == 0
        result = pacman.run("-S", "libgreet")
        assert result.returncode == 0, result.stdout + node.log()
        cached = node.wait_cached(pkg.filename)
        assert cached.read_bytes() == pkg.path.read_bytes()
        got = scrape(node)
        other = "gpg" if path == "in-process" else "in-process"
        assert value(got, CHECKS, path=path, outcome="accepted") == 1, name
        assert value(got, CHECKS, path=other, outcome="accepted") == 0, name
        assert value(got, CHECKS, path=path, outcome="refused") == 0, name
        node.stop()


def test_a_trusted_key_signature_over_other_bytes_gets_gpgs_refusal(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    """The packager's real signature of *another* package served as libgreet's .sig: the
    fast path takes it up (trusted key, usual form), its math fails, and gpg, not the fast
    path, refuses it. pacman never gets libgreet; nothing is cached."""
    strip_pgpsig_everywhere(mirror.root)  # the mirror's .sig is then what counts
    hello, libgreet = test_repo.packages["hello"], test_repo.packages["libgreet"]
    sig_of = {p.name: mirror.root / p.repo / "os" / "x86_64" / (p.filename + ".sig")
              for p in (hello, libgreet)}  # fmt: skip
    shutil.copy(sig_of["hello"], sig_of["libgreet"])
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "libgreet")
    assert result.returncode != 0, result.stdout
    got = scrape(node)
    assert value(got, CHECKS, path="in-process", outcome="accepted") == 0
    assert value(got, CHECKS, path="gpg", outcome="refused") >= 1
    assert not [p for p in node.cached_files() if p.name.startswith("libgreet")], node.log()


def test_a_sha512_signature_is_decided_in_process_from_a_second_hash(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    """A packager whose gpg.conf asks for SHA-512 (about a third of Arch's): the node hashes
    the 20 MiB package a second time as it arrives, and decides without gpg."""
    strip_pgpsig_everywhere(mirror.root)  # the mirror's .sig is then what counts
    pkg = test_repo.packages["largepkg"]
    served = mirror.root / pkg.repo / "os" / "x86_64" / pkg.filename
    try:
        key = f"{test_repo.packager_fpr}!"
        sig = gpg.run_gpg(test_repo.gnupghome, "--digest-algo", "SHA512", "--local-user", key,
                          "--detach-sign", "-o", "-", str(served))  # fmt: skip
    finally:
        gpg.kill_agent(test_repo.gnupghome)
    Path(f"{served}.sig").write_bytes(sig.stdout)
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "largepkg")
    assert result.returncode == 0, result.stdout + node.log()
    assert node.wait_cached(pkg.filename).read_bytes() == served.read_bytes()
    got = scrape(node)
    assert value(got, CHECKS, path="in-process", outcome="accepted") == 1, node.log()
    assert value(got, CHECKS, path="gpg", outcome="accepted") == 0
