"""The ``pacswarm`` command: ``init`` end to end on a temp directory, and its error exits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacswarm.cli import main
from pacswarm.config import DEFAULT_MIRROR

MIRRORLIST = """\
## pacman.conf users often put the cache first:
Server = http://127.0.0.1:7878/$repo/os/$arch
## Germany
Server = https://mirror.example.de/archlinux/$repo/os/$arch
#Server = https://commented.example/$repo/os/$arch
Server = http://localhost:7878/$repo/os/$arch
Server = http://127.0.0.1:8080/$repo/os/$arch
Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch
"""


@pytest.fixture
def mirrorlist(tmp_path: Path) -> Path:
    path = tmp_path / "mirrorlist"
    path.write_text(MIRRORLIST)
    return path


def servers(path: Path) -> list[str]:
    return [
        line.removeprefix("Server = ")
        for line in path.read_text().splitlines()
        if line.startswith("Server = ")
    ]


def test_init_imports_the_mirrorlist_in_order_without_itself(
    tmp_path: Path, mirrorlist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["init", "--data-dir", str(data), "--mirrorlist", str(mirrorlist)]) == 0
    expected = [
        "https://mirror.example.de/archlinux/$repo/os/$arch",
        "http://127.0.0.1:8080/$repo/os/$arch",
        "https://geo.mirror.pkgbuild.com/$repo/os/$arch",
    ]
    assert servers(data / "mirrorlist") == expected
    assert (data / "node.json").is_file()
    out = capsys.readouterr().out
    assert "created" in out
    assert "3 mirror(s)" in out
    assert "Server = https://mirror.example.de/archlinux/$repo/os/$arch" in out
    assert "7878" not in out


def test_init_twice_changes_nothing(
    tmp_path: Path, mirrorlist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    argv = ["init", "--data-dir", str(data), "--mirrorlist", str(mirrorlist)]
    assert main(argv) == 0
    imported = (data / "mirrorlist").read_bytes()
    node = (data / "node.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    assert (data / "mirrorlist").read_bytes() == imported
    assert (data / "node.json").read_bytes() == node
    assert "already initialised" in capsys.readouterr().out


def test_init_does_not_overwrite_an_earlier_import(tmp_path: Path, mirrorlist: Path) -> None:
    data = tmp_path / "data"
    assert main(["init", "--data-dir", str(data), "--mirrorlist", str(mirrorlist)]) == 0
    before = (data / "mirrorlist").read_bytes()
    other = tmp_path / "other"
    other.write_text("Server = https://other.example/$repo/os/$arch\n")
    assert main(["init", "--data-dir", str(data), "--mirrorlist", str(other)]) == 0
    assert (data / "mirrorlist").read_bytes() == before


def test_init_with_another_listen_port_keeps_the_7878_entry(
    tmp_path: Path, mirrorlist: Path
) -> None:
    data = tmp_path / "data"
    argv = ["init", "--data-dir", str(data), "--mirrorlist", str(mirrorlist)]
    assert main([*argv, "--listen", "127.0.0.1:8080"]) == 0
    assert servers(data / "mirrorlist") == [
        "http://127.0.0.1:7878/$repo/os/$arch",
        "https://mirror.example.de/archlinux/$repo/os/$arch",
        "http://localhost:7878/$repo/os/$arch",
        "https://geo.mirror.pkgbuild.com/$repo/os/$arch",
    ]


def test_init_without_a_mirrorlist_uses_the_default_mirror(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = tmp_path / "no-such-mirrorlist"
    assert main(["init", "--data-dir", str(data), "--mirrorlist", str(missing)]) == 0
    # Arch's own geo-balanced mirror.
    assert servers(data / "mirrorlist") == ["https://geo.mirror.pkgbuild.com/$repo/os/$arch"]


def test_init_with_only_self_entries_uses_the_default_mirror(tmp_path: Path) -> None:
    data = tmp_path / "data"
    only_self = tmp_path / "mirrorlist"
    only_self.write_text("Server = http://localhost:7878/$repo/os/$arch\n")
    assert main(["init", "--data-dir", str(data), "--mirrorlist", str(only_self)]) == 0
    assert servers(data / "mirrorlist") == [DEFAULT_MIRROR]


def test_init_with_a_bad_mirrorlist_line_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mirrorlist"
    bad.write_text("Server = https://ok.example/$repo/os/$arch\nServer = ftp://x/$repo\n")
    assert main(["init", "--data-dir", str(tmp_path / "d"), "--mirrorlist", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pacswarm: ")
    assert f"{bad}:2" in err


def test_config_with_an_unknown_key_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pacswarm.toml"
    config.write_text('listen = "127.0.0.1:7878"\nmirror_list = "/etc/pacman.d/mirrorlist"\n')
    data = tmp_path / "data"
    assert main(["init", "--config", str(config), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "mirror_list" in err
    assert str(config) in err
    assert not data.exists()  # nothing is created when the configuration is wrong


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["init", "--config", str(missing), "--data-dir", str(tmp_path / "d")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_listen_flag_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--listen", "7878", "--data-dir", str(tmp_path / "d")]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_config_file_values_are_used_by_init(tmp_path: Path, mirrorlist: Path) -> None:
    data = tmp_path / "from-config"
    config = tmp_path / "pacswarm.toml"
    config.write_text(f'data_dir = "{data}"\nmirrorlist = "{mirrorlist}"\n')
    assert main(["init", "--config", str(config)]) == 0
    assert servers(data / "mirrorlist")[0] == "https://mirror.example.de/archlinux/$repo/os/$arch"


def test_verify_of_a_missing_package_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "zstd-1.5.6-1-x86_64.pkg.tar.zst"
    assert main(["verify", str(package)]) == 1
    assert "zstd-1.5.6-1-x86_64.pkg.tar.zst" in capsys.readouterr().err


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "init" in capsys.readouterr().err
