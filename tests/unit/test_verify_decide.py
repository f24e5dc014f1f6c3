"""pacman's trust decision from gpg's ``--status-fd`` lines.

The outputs below are what gpg 2.2 prints for ``--batch --status-fd 1 --verify SIG FILE``
(captured from real runs, keys and ids shortened only where marked).
"""

from __future__ import annotations

import base64
import bz2

import pytest

from pacswarm.verify import MAX_SIGNATURE_BYTES, decide, signature_problem

FPR = "070E1ED54D4AFF41053A4925E9CB2CFBF48C685C"

HEAD = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] SIG_ID C2fFVKC+RWtrmnZhFaHRAB32uwg 2026-11-26 1795660520
[GNUPG:] KEY_CONSIDERED {FPR} 0
"""

GOOD = f"""\
{HEAD}[GNUPG:] GOODSIG E9CB2CFBF48C685C Test Packager <p@example.org>
[GNUPG:] VALIDSIG {FPR} 2026-11-26 1795660520 0 4 0 22 8 00 {FPR}
[GNUPG:] KEY_CONSIDERED {FPR} 0
"""


def good_with(trust_line: str) -> str:
    return f"{GOOD}[GNUPG:] {trust_line}\n"


def test_good_signature_fully_trusted_is_accepted() -> None:
    verdict = decide(good_with("TRUST_FULLY 0 pgp"))
    assert verdict.ok
    assert verdict.fingerprint == FPR
    assert FPR in verdict.reason


def test_good_signature_ultimately_trusted_is_accepted() -> None:
    verdict = decide(good_with("TRUST_ULTIMATE 0 pgp"))
    assert verdict.ok
    assert verdict.fingerprint == FPR


def test_marginal_trust_is_refused_like_pacman() -> None:
    verdict = decide(good_with("TRUST_MARGINAL 0 pgp"))
    assert not verdict.ok
    assert "marginal" in verdict.reason
    assert verdict.fingerprint == FPR


def test_undefined_trust_is_refused_as_unknown_trust() -> None:
    verdict = decide(good_with("TRUST_UNDEFINED 0 pgp"))
    assert not verdict.ok
    assert "unknown trust" in verdict.reason


def test_good_signature_without_any_trust_line_is_refused() -> None:
    verdict = decide(GOOD)
    assert not verdict.ok
    assert "unknown trust" in verdict.reason


def test_never_trusted_key_is_refused() -> None:
    verdict = decide(good_with("TRUST_NEVER 0 pgp"))
    assert not verdict.ok
    assert "never" in verdict.reason


def test_bad_signature_is_refused() -> None:
    out = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] BADSIG E9CB2CFBF48C685C Test Packager <p@example.org>
[GNUPG:] FAILURE gpg-exit 33554433
"""
    verdict = decide(out)
    assert not verdict.ok
    assert "invalid" in verdict.reason


def test_unknown_key_is_refused_naming_the_key() -> None:
    out = f"""\
[GNUPG:] NEWSIG
[GNUPG:] ERRSIG E9CB2CFBF48C685C 22 8 00 1795660520 9 {FPR}
[GNUPG:] NO_PUBKEY E9CB2CFBF48C685C
"""
    verdict = decide(out)
    assert not verdict.ok
    assert "E9CB2CFBF48C685C" in verdict.reason
    assert "pacman keyring" in verdict.reason


def test_errsig_alone_is_refused() -> None:
    # ERRSIG with rc 4: unsupported algorithm, no NO_PUBKEY line follows.
    verdict = decide(f"[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG E9CB2CFBF48C685C 99 8 00 1 4 {FPR}\n")
    assert not verdict.ok
    assert "E9CB2CFBF48C685C" in verdict.reason


def test_expired_key_is_refused() -> None:
    short = "4F4C57A265BE7F9FD7CE669C3A1251AAEEB1F741"
    out = f"""\
[GNUPG:] NEWSIG s@example.org
[GNUPG:] KEY_CONSIDERED {short} 0
[GNUPG:] KEYEXPIRED 1795746937
[GNUPG:] SIG_ID ylgxHuOBWA17TS/mCnXeN3CboY8 2026-11-26 1795660677
[GNUPG:] KEY_CONSIDERED {short} 0
[GNUPG:] EXPKEYSIG 3A1251AAEEB1F741 Short Lived <s@example.org>
[GNUPG:] VALIDSIG {short} 2026-11-26 1795660677 0 4 0 22 8 00 {short}
[GNUPG:] KEY_CONSIDERED {short} 0
"""
    verdict = decide(out)
    assert not verdict.ok
    assert "expired key" in verdict.reason


def test_revoked_key_is_refused_even_if_ultimately_trusted() -> None:
    # What gpg really prints for a revoked key the keyring holds as ultimately trusted.
    out = f"""\
{HEAD}[GNUPG:] REVKEYSIG E9CB2CFBF48C685C Test Packager <p@example.org>
[GNUPG:] VALIDSIG {FPR} 2026-11-26 1795660520 0 4 0 22 8 00 {FPR}
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] KEYREVOKED
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] TRUST_ULTIMATE 0 pgp
"""
    verdict = decide(out)
    assert not verdict.ok
    assert "revoked" in verdict.reason


def test_expired_signature_is_refused() -> None:
    out = f"""\
{HEAD}[GNUPG:] EXPSIG E9CB2CFBF48C685C Test Packager <p@example.org>
[GNUPG:] VALIDSIG {FPR} 2026-11-26 1795660520 0 4 0 22 8 00 {FPR}
[GNUPG:] TRUST_ULTIMATE 0 pgp
"""
    verdict = decide(out)
    assert not verdict.ok
    assert "expired" in verdict.reason


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("", id="empty"),
        pytest.param("gpg: no valid OpenPGP data found.\n", id="stderr-only"),
        pytest.param("[GNUPG:] NODATA 1\n[GNUPG:] FAILURE gpg-exit 33554433\n", id="nodata"),
        pytest.param(HEAD, id="fatal-before-verdict"),  # e.g. gpg could not lock the trustdb
    ],
)
def test_no_verdict_from_gpg_is_refused(output: str) -> None:
    verdict = decide(output)
    assert not verdict.ok
    assert "no valid signature" in verdict.reason


def test_trust_line_without_validsig_is_refused() -> None:
    # A trust line is about the key; without VALIDSIG nothing says the file matches.
    verdict = decide("[GNUPG:] NEWSIG\n[GNUPG:] TRUST_ULTIMATE 0 pgp\n")
    assert not verdict.ok


def test_lines_not_from_the_status_fd_are_ignored() -> None:
    out = "gpg: [GNUPG:] TRUST_ULTIMATE 0 pgp\n" + good_with("TRUST_UNDEFINED 0 pgp")
    assert not decide(out).ok


def test_str_of_a_verdict_is_its_reason() -> None:
    verdict = decide(good_with("TRUST_MARGINAL 0 pgp"))
    assert str(verdict) == verdict.reason


# -- several signatures in one file -------------------------------------------------------
# Captured from gpg 2.2.40 (``pacswarm.verify.gpg_verify_argv``) on .sig files made by
# concatenating detached signatures; pacman 6.0.2's verdict (``pacman -U`` with
# ``LocalFileSigLevel = Required``) on the same files is given for each.

PACKAGER = "F095AC98840D179B8A5651D58B8EF6BB9A397F76"
SECOND = "97692FEBFAA91E0D5F814B11F8BD661D845C8078"
ROGUE = "E82EE10461C55A60E9780D14F63405DBCDC20583"
EXPIRED = "39B47E123704175A92AE6416B23034C1B8A27691"
UNCERTIFIED = "3A1A6DE20A88A882BE19DC1442BB41399FC6E511"

PACKAGER_SIG = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {PACKAGER} 0
[GNUPG:] SIG_ID gCTchR3C+QpBdvgxojk7WJYflf0 2026-12-01 1796165424
[GNUPG:] KEY_CONSIDERED {PACKAGER} 0
[GNUPG:] GOODSIG 8B8EF6BB9A397F76 pacswarm test packager <packager@pacswarm.test>
[GNUPG:] VALIDSIG {PACKAGER} 2026-12-01 1796165424 0 4 0 22 8 00 {PACKAGER}
[GNUPG:] KEY_CONSIDERED {PACKAGER} 0
[GNUPG:] TRUST_FULLY 0 pgp
"""
SECOND_SIG = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {SECOND} 0
[GNUPG:] SIG_ID bS+mCdevqpFRoR8eEJKNFRVhJ1A 2026-12-01 1796165426
[GNUPG:] KEY_CONSIDERED {SECOND} 0
[GNUPG:] GOODSIG F8BD661D845C8078 pacswarm second <second@pacswarm.test>
[GNUPG:] VALIDSIG {SECOND} 2026-12-01 1796165426 0 4 0 22 8 00 {SECOND}
[GNUPG:] KEY_CONSIDERED {SECOND} 0
[GNUPG:] TRUST_FULLY 0 pgp
"""
ROGUE_SIG = f"""\
[GNUPG:] NEWSIG
[GNUPG:] ERRSIG F63405DBCDC20583 22 8 00 1796165426 9 {ROGUE}
[GNUPG:] NO_PUBKEY F63405DBCDC20583
"""
EXPIRED_SIG = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {EXPIRED} 0
[GNUPG:] KEYEXPIRED 1795387826
[GNUPG:] SIG_ID GaRkP4RuCB76anOTy5ad58RfbhA 2026-11-21 1795301426
[GNUPG:] KEY_CONSIDERED {EXPIRED} 0
[GNUPG:] EXPKEYSIG B23034C1B8A27691 pacswarm expired <expired@pacswarm.test>
[GNUPG:] VALIDSIG {EXPIRED} 2026-11-21 1795301426 0 4 0 22 8 00 {EXPIRED}
[GNUPG:] KEY_CONSIDERED {EXPIRED} 0
"""
UNCERTIFIED_SIG = f"""\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {UNCERTIFIED} 0
[GNUPG:] SIG_ID hGXs8tC2k3C9fVyU9KQA3jW2sfU 2026-12-01 1796165426
[GNUPG:] KEY_CONSIDERED {UNCERTIFIED} 0
[GNUPG:] GOODSIG 42BB41399FC6E511 pacswarm uncert <uncert@pacswarm.test>
[GNUPG:] VALIDSIG {UNCERTIFIED} 2026-12-01 1796165426 0 4 0 22 8 00 {UNCERTIFIED}
[GNUPG:] KEY_CONSIDERED {UNCERTIFIED} 0
[GNUPG:] TRUST_UNDEFINED 0 pgp
"""


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        # pacman: "key F63405DBCDC20583 could not be looked up remotely", refused
        pytest.param(PACKAGER_SIG + ROGUE_SIG, "signature 2 of 2: ", id="good+rogue"),
        pytest.param(ROGUE_SIG + PACKAGER_SIG, "signature 1 of 2: ", id="rogue+good"),
        # pacman: "invalid or corrupted package (PGP signature)"
        pytest.param(PACKAGER_SIG + EXPIRED_SIG, "expired key", id="good+expired"),
        pytest.param(PACKAGER_SIG + UNCERTIFIED_SIG, "unknown trust", id="good+uncertified"),
        pytest.param(UNCERTIFIED_SIG + SECOND_SIG, "unknown trust", id="uncertified+second"),
    ],
)
def test_every_signature_must_pass_like_pacman(output: str, reason: str) -> None:
    verdict = decide(output)
    assert not verdict.ok
    assert reason in verdict.reason


def test_rogue_signature_is_named_not_hidden_by_the_good_one() -> None:
    verdict = decide(PACKAGER_SIG + ROGUE_SIG)
    assert "F63405DBCDC20583" in verdict.reason
    assert "pacman keyring" in verdict.reason


def test_two_fully_trusted_signatures_are_accepted_like_pacman() -> None:
    verdict = decide(PACKAGER_SIG + SECOND_SIG)  # pacman -U: installed
    assert verdict.ok, verdict.reason
    assert verdict.fingerprint == PACKAGER
    assert PACKAGER in verdict.reason and SECOND in verdict.reason


def test_the_same_good_signature_twice_is_accepted_like_pacman() -> None:
    assert decide(PACKAGER_SIG + PACKAGER_SIG).ok  # pacman -U: installed


def test_real_expired_key_output_is_refused_like_pacman() -> None:
    verdict = decide(EXPIRED_SIG)  # gpg writes no TRUST_ line: gpgme's validity is UNKNOWN
    assert not verdict.ok
    assert "expired key" in verdict.reason
    assert verdict.fingerprint == EXPIRED


def test_uncertified_key_in_the_keyring_is_unknown_trust() -> None:
    verdict = decide(UNCERTIFIED_SIG)
    assert not verdict.ok
    assert "unknown trust" in verdict.reason


def test_outcome_lines_without_newsig_still_count_as_two_signatures() -> None:
    # Older gpg did not always write NEWSIG; the rogue outcome must not share the trust line.
    out = (PACKAGER_SIG + ROGUE_SIG).replace("[GNUPG:] NEWSIG\n", "")
    assert not decide(out).ok
    assert not decide(ROGUE_SIG.replace("[GNUPG:] NEWSIG\n", "") + PACKAGER_SIG).ok


def test_disabled_key_is_refused_like_pacman() -> None:
    # pacman-key --populate disables revoked keys; gpg's status lines look fully trusted and
    # only its stderr says so (captured); pacman (gpgme key->disabled) refuses.
    notes = (
        'gpg: Good signature from "pacswarm second <second@pacswarm.test>" [full]\n'
        "gpg: Note: This key has been disabled.\n"
    )
    verdict = decide(PACKAGER_SIG + SECOND_SIG, notes)
    assert not verdict.ok
    assert "disabled" in verdict.reason
    assert decide(PACKAGER_SIG + SECOND_SIG, "gpg: Good signature\n").ok


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("[GNUPG:] NODATA 1\n[GNUPG:] NODATA 2\n", id="garbage"),
        pytest.param("[GNUPG:] NODATA 3\n[GNUPG:] NODATA 4\n", id="truncated"),
        pytest.param("[GNUPG:] NODATA 2\n[GNUPG:] FAILURE verify 4294967295\n", id="empty"),
        # a good signature followed by junk: gpgme fails the whole check ("No data")
        pytest.param("[GNUPG:] NODATA 3\n" + PACKAGER_SIG, id="good+garbage"),
    ],
)
def test_non_signature_data_is_refused_like_pacman(output: str) -> None:
    verdict = decide(output)
    assert not verdict.ok
    assert "no valid signature" in verdict.reason


# -- what gpg is never given ---------------------------------------------------------------

# A real detached ed25519 signature (old-format packet header 0x88, 117-byte body).
REAL_SIG = base64.b64decode(
    "iHUEABYIAB0WIQTwlayYhA0Xm4pWUdWLjva7mjl/dgUCaw9PMAAKCRCLjva7mjl/dkMlAQD+0UbXrIOqk6dy8fd3"
    "dLl8yWWBCYf53dwRH1wYofC3YQEAlP96BSQJ/VHgrefDDnGtKdwbkQuXZkB/xjQljtOWKQ0="
)
ROGUE_BYTES = base64.b64decode(
    "iHUEABYIAB0WIQToLuEEYcVaYOl4DRT2NAXbzcIFgwUCaw9PMgAKCRD2NAXbzcIFgzdsAP0aZ3jL9dn41ckRMPvr"
    "Vw88N//DLYhVpjMiBlvsTHseegEArRsqdtN//WD2zLdqJ4nGGyy24oI4g5eFhxyarK+QJw4="
)


def _new_format(sig: bytes) -> bytes:
    """The same signature packet with a new-format header (tag 2, one-octet length)."""
    return bytes([0xC2, sig[1]]) + sig[2:]


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(REAL_SIG, id="one"),
        pytest.param(REAL_SIG + ROGUE_BYTES, id="two"),
        pytest.param(_new_format(REAL_SIG), id="new-format-header"),
        pytest.param(REAL_SIG * (MAX_SIGNATURE_BYTES // len(REAL_SIG)), id="at-the-cap"),
    ],
)
def test_plain_signatures_go_to_gpg(signature: bytes) -> None:
    assert signature_problem(signature) is None


def _compressed(body: bytes) -> bytes:
    data = b"\x03" + bz2.compress(body)  # algorithm 3: bzip2
    return bytes([0xC8, 0xFF]) + len(data).to_bytes(4, "big") + data


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        pytest.param(b"", "no signature to check", id="empty"),
        pytest.param(REAL_SIG * 200, "more than the 16384", id="oversized"),
        # 1 KB that gpg unpacks into 10,000 signatures: 0.6 s of gpg, 16 KiB would be hours
        pytest.param(_compressed(ROGUE_BYTES * 10_000), "compressed", id="compression-bomb"),
        pytest.param(
            b"-----BEGIN PGP SIGNATURE-----\n\niHUE\n-----END PGP SIGNATURE-----\n",
            "not binary OpenPGP",
            id="armored",
        ),
        pytest.param(REAL_SIG[:-10], "truncated", id="truncated"),
        pytest.param(REAL_SIG + b"\x00garbage", "not binary OpenPGP", id="trailing-junk"),
        pytest.param(b"\xcb\x05\x62\x00\x00\x00\x00", "literal data", id="literal-data"),
        pytest.param(b"\x8b", "not binary OpenPGP", id="header-only"),
        pytest.param(b"\xc2\xe0", "not binary OpenPGP", id="partial-length"),
    ],
)
def test_signatures_gpg_must_not_see(signature: bytes, reason: str) -> None:
    problem = signature_problem(signature)
    assert problem is not None
    assert reason in problem
