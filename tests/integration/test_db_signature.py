"""A wrong %PGPSIG% in the repo db is refused, even when the mirror's ``.sig`` file is good.

pacman 6.0.2 checks the signature the db carries and never looks at the ``.sig`` it also
downloads; pacswarm must decide on the same signature, or it would cache (and publish) a
package whose db entry pacman's own check refuses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.dbedit import replace_pgpsig
from tests.support.mirror import MirrorServer
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

#: pacman asks a keyserver about an unknown key; this one refuses at once, on 127.0.0.1.
_NO_KEYSERVER = "keyserver hkp://127.0.0.1:9\n"


def _wrong_signature(kind: str, test_repo: TestRepo, tmp_path: Path) -> bytes | str:
    """A signature that is not libgreet's: another package's, a rogue key's, or not base64."""
    if kind == "not-base64":
        return "!!!not-base64!!!"
    if kind == "other-package":
        return test_repo.packages["hello"].sig_path.read_bytes()  # same packager key
    rogue = tmp_path / "rogue.sig"
    test_repo.sign(test_repo.packages["libgreet"].path, rogue, key="rogue")
    return rogue.read_bytes()


@pytest.mark.parametrize(
    ("kind", "pacman_says", "pacswarm_says"),
    [
        ("other-package", "is invalid", "signature is invalid"),
        ("rogue-key", "required key missing from keyring", "unknown key"),
        # pacswarm used to fall back to the good .sig here, and cache the package
        ("not-base64", "missing required signature", "no signature to check"),
    ],
)
def test_wrong_db_signature_is_refused_like_pacman(
    kind: str,
    pacman_says: str,
    pacswarm_says: str,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    pacman_gpgdir: Path,
    tmp_path: Path,
) -> None:
    libgreet = test_repo.packages["libgreet"]
    core = mirror.root / "core/os/x86_64"
    replace_pgpsig(core, "core", libgreet.filename, _wrong_signature(kind, test_repo, tmp_path))
    assert (core / (libgreet.filename + ".sig")).read_bytes() == libgreet.sig_path.read_bytes()
    (pacman_gpgdir / "dirmngr.conf").write_text(_NO_KEYSERVER)
    with (pacman_gpgdir / "gpg.conf").open("a") as conf:
        conf.write(_NO_KEYSERVER)

    # The reference: the real pacman straight from the mirror refuses the package.
    with PacmanEnv(tmp_path / "direct", [mirror.url_template], pacman_gpgdir) as direct:
        assert direct.run("-Sy").returncode == 0
        refused = direct.run("-S", "libgreet")
        assert refused.returncode != 0, refused.stdout
        assert pacman_says in refused.stdout, refused.stdout

    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    failed = pacman.run("-S", "libgreet")
    assert failed.returncode != 0, failed.stdout
    assert not pacman.installed_file("usr/share/libgreet/greeting").exists()
    assert not [p for p in node.cached_files() if libgreet.filename in p.name]
    assert pacswarm_says in node.log(), node.log()
    # The mirror sent the bytes the db names: the db's signature is no fault of the mirror,
    # which must stay first in line for every other package.
    assert f"mirror {mirror.url_template} failed" not in node.log(), node.log()
