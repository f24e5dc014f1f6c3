"""trust.py's pure parts: gpg's colon listing and the gpg.conf options that turn it off.

The listing is gpg's own verdict on each key; misreading a field (validity, the disabled
flag, expiry) would make the fast path trust a key gpg does not, so the parser is pinned on
records in gpg 2.2's format (doc/DETAILS).
"""

from __future__ import annotations

import pytest

from pacswarm.trust import gpg_conf_problem, parse_listing

LISTING = """\
tru::1:1796196887:1796800000:3:1:5
pub:f:255:22:559605B8C46950A8:1796196881:::-:::scSC:::::ed25519:::0:
fpr:::::::::B7B3AB0FA0357C379EFB48DE559605B8C46950A8:
uid:f::::1796196881::FA6E::pacswarm test packager <packager@pacswarm.test>::::::::::0:
sub:f:2048:1:1111222233334444:1796196900:1796300000:::::s::::::23:
fpr:::::::::AAAABBBBCCCCDDDDEEEEFFFF1111222233334444:
pub:r:255:22:0C2599FD8D1E0631:1796196881:::-:::sc::::::ed25519:::0:
fpr:::::::::8AA2B6F3A6B5A97BE610671C0C2599FD8D1E0631:
pub:f:255:22:7D9D892A5F5F3E81:1796196881:::-:::scSCD:::::ed25519:::0:
fpr:::::::::214390346789CDEE2FDDBC247D9D892A5F5F3E81:
sub:f:255:22:9999888877776666:1796196881::::::s:::::ed25519:
fpr:::::::::00001111222233334444555566667777888899AA:
"""


def test_listing_fields() -> None:
    listing = parse_listing(LISTING)
    assert listing.trust_model == "1" and listing.next_check == 1796800000
    packager = listing.keys["B7B3AB0FA0357C379EFB48DE559605B8C46950A8"]
    assert (packager.validity, packager.created, packager.expires) == ("f", 1796196881, None)
    assert packager.can_sign and not packager.disabled and not packager.is_subkey
    sub = listing.keys["AAAABBBBCCCCDDDDEEEEFFFF1111222233334444"]
    assert sub.is_subkey and sub.primary == packager.fingerprint
    assert (sub.created, sub.expires, sub.can_sign) == (1796196900, 1796300000, True)
    assert listing.keys["8AA2B6F3A6B5A97BE610671C0C2599FD8D1E0631"].validity == "r"


def test_disabled_primary_disables_its_subkeys() -> None:
    listing = parse_listing(LISTING)
    assert listing.keys["214390346789CDEE2FDDBC247D9D892A5F5F3E81"].disabled
    assert listing.keys["00001111222233334444555566667777888899AA"].disabled


def test_pacman_keys_gpg_conf_keeps_the_fast_path_on() -> None:
    conf = (
        "no-greeting\nno-permission-warning\nlock-never\nkeyserver-options timeout=10\n"
        "keyserver-options import-clean\n# trust-model always\ntrust-model pgp\n"
        "keyserver hkp://127.0.0.1:9\n"
    )
    assert gpg_conf_problem(conf) is None


@pytest.mark.parametrize(
    "line",
    [
        "trust-model always",
        "trust-model tofu+pgp",
        "faked-system-time 20300101T000000",
        "ignore-time-conflict",
        "ignore-valid-from",
        "--trusted-key 0123456789ABCDEF",
        "keyring /tmp/other.gpg",
        "allow-weak-digest-algos",
    ],
)
def test_options_that_change_gpgs_verdict_turn_it_off(line: str) -> None:
    problem = gpg_conf_problem(f"no-greeting\n{line}  # set by someone\n")
    assert problem is not None and "gpg.conf sets" in problem
