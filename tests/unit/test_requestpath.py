"""What pacman asks for, and the paths that must never reach the file system."""

from __future__ import annotations

import pytest

from pacswarm.requestpath import BadPath, FileKind, RequestPath, classify, parse_request_path


@pytest.mark.parametrize(
    ("repo", "filename"),
    [
        ("core", "core.db"),
        ("core", "core.db.sig"),
        ("core", "core.files"),
        ("core", "core.files.sig"),
        ("extra", "extra.db.tar.gz"),
        ("extra", "extra.files.tar.gz"),
        ("multilib", "multilib.db.tar.zst"),
    ],
)
def test_repo_databases_are_db(repo: str, filename: str) -> None:
    assert parse_request_path(repo, "os", "x86_64", filename).kind is FileKind.DB


@pytest.mark.parametrize(
    "filename",
    [
        "zstd-1.5.6-1-x86_64.pkg.tar.zst",
        "linux-6.9.1.arch1-1-x86_64.pkg.tar.zst",
        "archlinux-keyring-20240520-1-any.pkg.tar.zst",
        "glibc-2.35-5-x86_64.pkg.tar.xz",
        "old-1.0-1-any.pkg.tar.gz",
        "plain-1.0-1-any.pkg.tar",
        "gcc-libs-14.1.1+r1+g43b730b9134-1-x86_64.pkg.tar.zst",
        "libc++-18.1.6-1-x86_64.pkg.tar.zst",
        "python-1:3.12.3-1-x86_64.pkg.tar.zst",
        "vim-9.1.0000~rc1-1-x86_64.pkg.tar.zst",
        "lib32-gcc-libs-14.1.1-1-x86_64.pkg.tar.zst",
    ],
)
def test_package_files_are_packages(filename: str) -> None:
    rp = parse_request_path("extra", "os", "x86_64", filename)
    assert rp.kind is FileKind.PACKAGE
    assert rp.package_filename == filename


@pytest.mark.parametrize(
    "filename",
    ["zstd-1.5.6-1-x86_64.pkg.tar.zst.sig", "glibc-2.35-5-x86_64.pkg.tar.xz.sig"],
)
def test_package_signatures_name_their_package(filename: str) -> None:
    rp = parse_request_path("core", "os", "x86_64", filename)
    assert rp.kind is FileKind.PACKAGE_SIG
    assert rp.package_filename == filename.removesuffix(".sig")


def test_epoch_with_colon_is_kept_intact() -> None:
    rp = parse_request_path("extra", "os", "x86_64", "vlc-3:3.0.20-11-x86_64.pkg.tar.zst")
    assert rp.filename == "vlc-3:3.0.20-11-x86_64.pkg.tar.zst"
    assert str(rp) == "/extra/os/x86_64/vlc-3:3.0.20-11-x86_64.pkg.tar.zst"


@pytest.mark.parametrize(
    "filename", ["lastupdate", "lastsync", "README", "zstd-1.5.6-1-x86_64.pkg.tar.zst.part"]
)
def test_anything_else_is_other(filename: str) -> None:
    assert parse_request_path("core", "os", "x86_64", filename).kind is FileKind.OTHER


def test_another_repos_db_is_not_this_repos_db() -> None:
    # extra.db asked under /core/ is not core's database.
    assert classify("core", "extra.db") is FileKind.OTHER


def test_str_is_the_request_path() -> None:
    rp = RequestPath("core", "x86_64", "core.db", FileKind.DB)
    assert str(rp) == "/core/os/x86_64/core.db"


# -- rejected ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        "..",
        ".",
        "..core.db",
        "foo..pkg.tar.zst",
        ".hidden",
        ".core.db",
        "../core.db",
        "a/b.pkg.tar.zst",  # %2F already decoded by the router
        "core.db\0.pkg.tar.zst",
        "x" * 256,
        "",
        "-rf.pkg.tar.zst",
        "a b.pkg.tar.zst",
        "a%2Fb.pkg.tar.zst",
        "a\\b.pkg.tar.zst",
        "core.db\n",
    ],
)
def test_dangerous_file_names_are_rejected(filename: str) -> None:
    with pytest.raises(BadPath, match="file name"):
        parse_request_path("core", "os", "x86_64", filename)


def test_255_character_name_is_accepted() -> None:
    name = "a" * (255 - len(".pkg.tar.zst")) + ".pkg.tar.zst"
    assert parse_request_path("core", "os", "x86_64", name).kind is FileKind.PACKAGE


@pytest.mark.parametrize("repo", ["..", ".", ".core", "co/re", "a..b", "", "core\0", "c" * 65])
def test_bad_repo_names_are_rejected(repo: str) -> None:
    with pytest.raises(BadPath, match="repository"):
        parse_request_path(repo, "os", "x86_64", "core.db")


@pytest.mark.parametrize("arch", ["..", ".x86_64", "x86/64", "", "x86_64\0"])
def test_bad_arch_names_are_rejected(arch: str) -> None:
    with pytest.raises(BadPath, match="architecture"):
        parse_request_path("core", "os", arch, "core.db")


@pytest.mark.parametrize("os_part", ["OS", "..", "", "os2", "iso"])
def test_the_second_segment_must_be_os(os_part: str) -> None:
    with pytest.raises(BadPath, match=r"/\$repo/os/\$arch"):
        parse_request_path("core", os_part, "x86_64", "core.db")
