"""pacman's trust decision from gpg's ``--status-fd`` lines.

The outputs below are what gpg 2.2 prints for ``--batch --status-fd 1 --verify SIG FILE``
(captured from real runs, keys and ids shortened only where marked).
"""

from __future__ import annotations

import pytest

from pacswarm.verify import decide

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
