"""Mirrorlist parsing, self-loop detection and URL expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacswarm.errors import MirrorlistError
from pacswarm.mirrorlist import (
    mirror_url,
    parse_mirrorlist,
    points_at_self,
    read_mirrorlist,
    usable_mirrors,
)

# Shaped like the file the pacman-mirrorlist package and reflector write.
ARCH_MIRRORLIST = """\
##
## Arch Linux repository mirrorlist
## Generated on 2024-05-01
##

## Worldwide
Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch
#Server = http://mirror.rackspace.com/archlinux/$repo/os/$arch
#Server = https://mirror.rackspace.com/archlinux/$repo/os/$arch

## Germany
Server = https://mirror.example.de/archlinux/$repo/os/$arch   # fast one
  Server=http://ftp.example.de/pub/archlinux/$repo/os/$arch
## France
#Server = http://archlinux.example.fr/$repo/os/$arch
Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch
Include = /etc/pacman.d/other-mirrorlist
Server = https://mirror.example.fr/arch/$repo/os/$arch
"""


def test_realistic_mirrorlist_keeps_active_servers_in_order() -> None:
    assert parse_mirrorlist(ARCH_MIRRORLIST) == [
        "https://geo.mirror.pkgbuild.com/$repo/os/$arch",
        "https://mirror.example.de/archlinux/$repo/os/$arch",
        "http://ftp.example.de/pub/archlinux/$repo/os/$arch",
        "https://mirror.example.fr/arch/$repo/os/$arch",
    ]


def test_commented_servers_are_ignored() -> None:
    text = "#Server = https://a.example/$repo/os/$arch\n# Server = https://b.example/x\n"
    assert parse_mirrorlist(text) == []


def test_duplicates_are_dropped_keeping_the_first_position() -> None:
    text = "Server = https://a/x\nServer = https://b/x\nServer = https://a/x\n"
    assert parse_mirrorlist(text) == ["https://a/x", "https://b/x"]


def test_include_and_other_directives_are_ignored() -> None:
    text = "[core]\nInclude = /etc/pacman.d/mirrorlist\nSigLevel = Required\nServer = https://a/x\n"
    assert parse_mirrorlist(text) == ["https://a/x"]


def test_windows_line_endings_are_accepted() -> None:
    assert parse_mirrorlist("Server = https://a/x\r\nServer = https://b/x\r\n") == [
        "https://a/x",
        "https://b/x",
    ]


@pytest.mark.parametrize(
    "url", ["ftp://ftp.example.org/$repo/os/$arch", "file:///srv/repo/$repo", "/srv/repo", ""]
)
def test_non_http_server_is_an_error_naming_file_and_line(url: str) -> None:
    text = f"## header\nServer = https://ok/x\nServer = {url}\n"
    with pytest.raises(MirrorlistError, match=r"^/etc/pacman\.d/mirrorlist:3: ") as err:
        parse_mirrorlist(text, "/etc/pacman.d/mirrorlist")
    assert "http" in str(err.value)


def test_read_mirrorlist_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "mirrorlist"
    path.write_text("Server = rsync://x/$repo\n")
    with pytest.raises(MirrorlistError, match=f"{path}:1:"):
        read_mirrorlist(path)


def test_read_mirrorlist_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mirrorlist"
    path.write_text(ARCH_MIRRORLIST)
    assert read_mirrorlist(path) == parse_mirrorlist(ARCH_MIRRORLIST)


def test_unreadable_mirrorlist_is_a_mirrorlist_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorlistError, match="cannot read mirrorlist"):
        read_mirrorlist(tmp_path / "missing")


def test_server_with_a_malformed_port_is_a_mirrorlist_error() -> None:
    # pacman would fail on this line too; pacswarm must say which line, not crash later.
    text = "Server = https://ok.example/$repo/os/$arch\nServer = http://bad.example:80a/$repo\n"
    with pytest.raises(MirrorlistError, match="ml:2"):
        usable_mirrors(parse_mirrorlist(text, "ml"), "127.0.0.1", 7878)


# -- pointing at ourselves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:7878/$repo/os/$arch",
        "http://localhost:7878/$repo/os/$arch",
        "http://127.0.0.2:7878/$repo/os/$arch",
        "http://[::1]:7878/$repo/os/$arch",
        "http://LOCALHOST:7878/$repo/os/$arch",
    ],
)
def test_loopback_urls_on_our_port_point_at_self(url: str) -> None:
    assert points_at_self(url, "127.0.0.1", 7878)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:7879/$repo/os/$arch",
        "http://127.0.0.1/$repo/os/$arch",
        "https://127.0.0.1/$repo/os/$arch",
        "http://mirror.example.org:7878/$repo/os/$arch",
        "http://192.168.1.10:7878/$repo/os/$arch",
        "https://geo.mirror.pkgbuild.com/$repo/os/$arch",
    ],
)
def test_other_ports_and_hosts_do_not_point_at_self(url: str) -> None:
    assert not points_at_self(url, "127.0.0.1", 7878)


def test_default_ports_are_taken_into_account() -> None:
    assert points_at_self("http://localhost/$repo/os/$arch", "127.0.0.1", 80)
    assert points_at_self("https://localhost/$repo/os/$arch", "127.0.0.1", 443)
    assert not points_at_self("https://localhost/$repo/os/$arch", "127.0.0.1", 80)


def test_listening_on_all_addresses_catches_loopback_urls() -> None:
    assert points_at_self("http://127.0.0.1:7878/$repo/os/$arch", "0.0.0.0", 7878)
    assert points_at_self("http://localhost:7878/$repo/os/$arch", "::", 7878)


def test_same_non_loopback_host_and_port_points_at_self() -> None:
    assert points_at_self("http://10.0.0.5:7878/$repo/os/$arch", "10.0.0.5", 7878)
    assert not points_at_self("http://10.0.0.6:7878/$repo/os/$arch", "10.0.0.5", 7878)


def test_usable_mirrors_drops_only_self_and_keeps_order() -> None:
    urls = [
        "http://127.0.0.1:7878/$repo/os/$arch",
        "https://a.example/$repo/os/$arch",
        "http://localhost:7878/$repo/os/$arch",
        "http://127.0.0.1:8080/$repo/os/$arch",
        "https://b.example/$repo/os/$arch",
    ]
    assert usable_mirrors(urls, "127.0.0.1", 7878) == [
        "https://a.example/$repo/os/$arch",
        "http://127.0.0.1:8080/$repo/os/$arch",
        "https://b.example/$repo/os/$arch",
    ]


def test_usable_mirrors_with_another_listen_port_keeps_7878() -> None:
    urls = ["http://127.0.0.1:7878/$repo/os/$arch", "http://127.0.0.1:9000/$repo/os/$arch"]
    assert usable_mirrors(urls, "127.0.0.1", 9000) == ["http://127.0.0.1:7878/$repo/os/$arch"]


# -- URL expansion ----------------------------------------------------------------------------


def test_mirror_url_expands_repo_and_arch() -> None:
    url = mirror_url(
        "https://mirror.example.de/archlinux/$repo/os/$arch",
        "extra",
        "x86_64",
        "zstd-1.5.6-1-x86_64.pkg.tar.zst",
    )
    assert (
        url == "https://mirror.example.de/archlinux/extra/os/x86_64/zstd-1.5.6-1-x86_64.pkg.tar.zst"
    )


def test_mirror_url_with_trailing_slash_has_no_double_slash() -> None:
    assert mirror_url("https://m/$repo/os/$arch/", "core", "x86_64", "core.db") == (
        "https://m/core/os/x86_64/core.db"
    )


def test_mirror_url_without_placeholders_appends_the_file() -> None:
    assert mirror_url("https://m/flat", "core", "x86_64", "core.db") == "https://m/flat/core.db"


def test_mirror_url_expands_repeated_placeholders() -> None:
    assert mirror_url("https://m/$arch/$repo/$arch", "core", "aarch64", "f") == (
        "https://m/aarch64/core/aarch64/f"
    )
