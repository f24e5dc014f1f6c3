"""Configuration: defaults, the TOML file, flags on top, and the messages of refused values."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pacswarm.config import (
    DEFAULT_GPGDIR,
    Config,
    config_keys,
    default_data_dir,
    load_config,
    parse_listen,
)
from pacswarm.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacswarm.toml"
    path.write_text(text)
    return path


# -- defaults ---------------------------------------------------------------------------------


def test_default_listen_is_loopback_7878() -> None:
    config = load_config(None)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 7878)
    assert config.listen == "127.0.0.1:7878"


def test_default_gpgdir_is_the_pacman_keyring() -> None:
    assert load_config(None).gpgdir == DEFAULT_GPGDIR == Path("/etc/pacman.d/gnupg")


def test_default_stall_timeout_is_below_pacmans_limit() -> None:
    assert load_config(None).stall_timeout < 10


def test_data_dir_for_root_is_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_DATA_HOME", "/somewhere/else")
    assert default_data_dir() == Path("/var/lib/pacswarm")
    assert load_config(None).data_dir == Path("/var/lib/pacswarm")


def test_data_dir_for_a_user_follows_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_config(None).data_dir == tmp_path / "xdg" / "pacswarm"


def test_data_dir_for_a_user_without_xdg_is_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "pacswarm"


def test_empty_xdg_data_home_is_treated_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "pacswarm"


# -- the TOML file ------------------------------------------------------------------------------


def test_every_key_of_the_file_is_applied(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen = "0.0.0.0:9000"
data_dir = "/srv/pacswarm"
mirrorlist = "/etc/pacman.d/other-mirrorlist"
mirrors = ["https://a.example/$repo/os/$arch", "http://b.example/arch/$repo/os/$arch"]
gpgdir = "/srv/keyring"
connect_timeout = 2
stall_timeout = 3.5
min_speed = 1000
mirror_penalty = 60
db_freeze_after = 86400
log_level = "DEBUG"
""",
    )
    config = load_config(path)
    assert config.listen == "0.0.0.0:9000"
    assert config.data_dir == Path("/srv/pacswarm")
    assert config.mirrorlist == Path("/etc/pacman.d/other-mirrorlist")
    assert config.mirrorlist_explicit is True
    assert config.mirrors == (
        "https://a.example/$repo/os/$arch",
        "http://b.example/arch/$repo/os/$arch",
    )
    assert config.gpgdir == Path("/srv/keyring")
    assert config.connect_timeout == 2.0
    assert config.stall_timeout == 3.5
    assert config.min_speed == 1000
    assert config.mirror_penalty == 60.0
    assert config.db_freeze_after == 86400.0
    assert config.log_level == "debug"


def test_keys_not_in_the_file_keep_their_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'log_level = "warning"\n'))
    assert config.listen == "127.0.0.1:7878"
    assert config.stall_timeout == Config().stall_timeout
    assert config.mirrorlist_explicit is False


def test_tilde_in_paths_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(write(tmp_path, 'data_dir = "~/cache"\n'))
    assert config.data_dir == tmp_path / "cache"


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config(None)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:9000"\nlog_level = "debug"\ngpgdir = "/a"\n')
    config = load_config(path, {"listen": "127.0.0.1:9100", "gpgdir": Path("/b")})
    assert config.listen_port == 9100
    assert config.gpgdir == Path("/b")
    assert config.log_level == "debug"  # not given as a flag: the file's value stays


def test_flags_left_unset_do_not_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:9000"\n')
    config = load_config(path, {"listen": None, "data_dir": None, "mirrorlist": None})
    assert config.listen_port == 9000
    assert config.mirrorlist_explicit is False


def test_mirrorlist_flag_makes_it_explicit(tmp_path: Path) -> None:
    config = load_config(None, {"mirrorlist": tmp_path / "ml"})
    assert config.mirrorlist == tmp_path / "ml"
    assert config.mirrorlist_explicit is True


def test_config_keys_lists_every_toml_key() -> None:
    assert config_keys() == [
        "audit.max_size",
        "audit.per_hour",
        "bootstrap",
        "cache_max_size",
        "connect_timeout",
        "data_dir",
        "db_freeze_after",
        "fast_verify",
        "gateway_listen",
        "gpgdir",
        "ipns.lifetime",
        "ipns.publish",
        "ipns.republish",
        "ipns.ttl",
        "keep_versions",
        "listen",
        "log_level",
        "mdns",
        "min_speed",
        "mirror_penalty",
        "mirrorlist",
        "mirrors",
        "p2p_listen",
        "seed.daily_budget",
        "seed.interval",
        "seed.random_packages",
        "stall_timeout",
        "swarm.allowlist",
        "swarm.announce",
        "swarm.cache_entries",
        "swarm.digest_interval",
        "swarm.peer_concurrency",
        "swarm.peer_expiry",
        "swarm.peer_first_byte",
        "swarm.peer_rate",
        "swarm.serve_public",
        "swarm.strike_ban",
        "swarm.strikes",
        "verify_window",
    ]


def test_swarm_tables(tmp_path: Path) -> None:
    peer = "12D3KooWGzBuAZ3DpL6M5z5ioEdEpUe8Xy1VbBcvHN9cmwAyrR9d"
    path = write(
        tmp_path,
        f'[swarm]\nannounce = "seeded"\nallowlist = ["{peer}"]\npeer_rate = "8 MiB"\n'
        '[seed]\nrandom_packages = 5\ndaily_budget = "2 GB"\n[audit]\nper_hour = 0\n',
    )
    config = load_config(path)
    assert config.swarm.announce == "seeded"
    assert config.swarm.allowlist == (peer,)
    assert config.swarm.peer_rate == 8 * 1024 * 1024
    assert config.seed.random_packages == 5
    assert config.seed.daily_budget == 2_000_000_000
    assert config.audit.per_hour == 0.0
    assert config.swarm.serve_public is False  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[swarm]\nannounce = "some"\n', 'expected "all"'),
        ('[swarm]\nallowlist = ["not a peer"]\n', "is not a peer ID"),
        ('[swarm]\npeer_rate = "fast"\n', "expected a size"),
        ("[swarm]\npeer_first_byte = 9\n", "pacman's"),
        ("[seed]\nrandom = 3\n", "unknown key(s) in [seed]: random"),
        ('seed = "yes"\n', "must be a table"),
    ],
)
def test_bad_swarm_tables_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, text))


def test_ipfs_defaults_and_overrides(tmp_path: Path) -> None:
    config = load_config(None)
    assert config.p2p_listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert config.gateway_listen == "0.0.0.0:4080"
    assert config.mdns is True
    assert config.bootstrap == ()  # dial nothing on the internet unless asked
    path = write(
        tmp_path,
        'p2p_listen = ["/ip4/127.0.0.1/tcp/0"]\ngateway_listen = "127.0.0.1:0"\n'
        "bootstrap = []\nmdns = false\n",
    )
    config = load_config(path, {"bootstrap": ["/ip4/127.0.0.1/tcp/9/p2p/QmPeer"]})
    assert config.p2p_listen == ("/ip4/127.0.0.1/tcp/0",)
    assert (config.gateway_host, config.gateway_port) == ("127.0.0.1", 0)
    assert config.bootstrap == ("/ip4/127.0.0.1/tcp/9/p2p/QmPeer",)
    assert config.mdns is False


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('p2p_listen = ["0.0.0.0:4001"]', "not a multiaddr"),
        ('bootstrap = ["/ip4/1.2.3.4/tcp/4001"]', "/p2p/"),
        ('mdns = "yes"', "mdns"),
        ('gateway_listen = "nope"', "gateway_listen"),
    ],
)
def test_bad_ipfs_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text + "\n"))


# -- refused values -----------------------------------------------------------------------------


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:7878"\nstall_timout = 3\n')
    with pytest.raises(ConfigError, match="stall_timout") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_field_names_that_are_not_toml_keys_are_refused(tmp_path: Path) -> None:
    # listen_host is a Config field but the file spells it "listen".
    with pytest.raises(ConfigError, match="listen_host"):
        load_config(write(tmp_path, 'listen_host = "0.0.0.0"\n'))


def test_unknown_flag_is_named() -> None:
    with pytest.raises(ConfigError, match=r"flags: unknown key.*colour"):
        load_config(None, {"colour": "auto"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("7878", "expected HOST:PORT"),
        (":7878", "expected HOST:PORT"),
        ("localhost:http", "not a number"),
        ("localhost:", "not a number"),
        ("localhost:65536", "0..65535"),
        ("localhost:-1", "0..65535"),
    ],
)
def test_bad_listen_is_refused(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(write(tmp_path, f'listen = "{value}"\n'))
    assert value in str(err.value)


def test_listen_accepts_bracketed_ipv6() -> None:
    assert parse_listen("[::1]:7878") == ("::1", 7878)
    assert parse_listen("[::]:80") == ("::", 80)


def test_stall_timeout_of_ten_seconds_is_refused_mentioning_pacman(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stall_timeout") as err:
        load_config(write(tmp_path, "stall_timeout = 10\n"))
    assert "pacman" in str(err.value)
    assert "10 s" in str(err.value)


def test_stall_timeout_just_below_ten_is_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "stall_timeout = 9.5\n")).stall_timeout == 9.5


@pytest.mark.parametrize("key", ["connect_timeout", "stall_timeout", "mirror_penalty"])
@pytest.mark.parametrize("value", ["0", "-1", '"5"', "true"])
def test_timeouts_must_be_positive_numbers(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, f"{key} = {value}\n"))


def test_stall_timeout_nan_is_refused(tmp_path: Path) -> None:
    # TOML allows nan; a NaN stall timeout would disable the stall watchdog entirely.
    with pytest.raises(ConfigError, match="stall_timeout"):
        load_config(write(tmp_path, "stall_timeout = nan\n"))


@pytest.mark.parametrize("value", ["-1", "1.5", '"fast"'])
def test_min_speed_must_be_a_whole_number(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="min_speed"):
        load_config(write(tmp_path, f"min_speed = {value}\n"))


def test_log_level_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_level"):
        load_config(write(tmp_path, 'log_level = "verbose"\n'))


@pytest.mark.parametrize(
    "value", ['"https://a.example/$repo/os/$arch"', '["ftp://a.example/$repo"]', "[1, 2]"]
)
def test_mirrors_must_be_a_list_of_http_urls(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="mirror"):
        load_config(write(tmp_path, f"mirrors = {value}\n"))


@pytest.mark.parametrize("key", ["data_dir", "gpgdir"])
def test_directories_must_be_non_empty_paths(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, f'{key} = ""\n'))
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, f"{key} = 5\n"))


def test_mirrorlist_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    # A number where a path belongs must be reported like every other bad key, not crash.
    with pytest.raises(ConfigError, match="mirrorlist"):
        load_config(write(tmp_path, "mirrorlist = 5\n"))


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_config(missing)
    assert str(missing) in str(err.value)


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:7878\n')  # unterminated string
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_config(path)
    assert str(path) in str(err.value)


# -- the package cache ------------------------------------------------------------------------


def test_cache_defaults_keep_three_versions_and_a_laptop_safe_cap() -> None:
    config = load_config(None)
    assert config.keep_versions == 3
    # A tenth of the filesystem, but a 2 TB disk does not give up 200 GB to old packages.
    assert config.cache_max_size.resolve(100 << 30) == 10 << 30
    assert config.cache_max_size.resolve(2000 << 30) == 20 << 30


@pytest.mark.parametrize(
    ("text", "disk", "expected"),
    [
        ('"20 GiB"', 1 << 40, 20 << 30),
        ('"8 MiB"', 1 << 40, 8 << 20),
        ("1048576", 1 << 40, 1 << 20),
        ('"10%"', 1000 << 30, 100 << 30),
        ('"25 % up to 1 GiB"', 100 << 30, 1 << 30),
    ],
)
def test_cache_max_size_forms(tmp_path: Path, text: str, disk: int, expected: int) -> None:
    config = load_config(write(tmp_path, f"cache_max_size = {text}\nkeep_versions = 1\n"))
    assert config.cache_max_size.resolve(disk) == expected
    assert config.keep_versions == 1
    # What the status page and `pacswarm gc` print reads back as the same setting.
    again = load_config(write(tmp_path, f'cache_max_size = "{config.cache_max_size}"\n'))
    assert again.cache_max_size == config.cache_max_size


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('cache_max_size = "0%"', "above 0%"),
        ('cache_max_size = "150%"', "at most 100%"),
        ("cache_max_size = 0", "at least one package"),
        ('cache_max_size = "lots"', "20 GiB"),
        ("cache_max_size = true", "20 GiB"),
        ("keep_versions = 0", "1 or more"),
        ('keep_versions = "3"', "whole number"),
    ],
)
def test_cache_settings_refused_with_a_hint(tmp_path: Path, line: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(write(tmp_path, line + "\n"))


def test_fast_verify_is_on_by_default_and_takes_only_a_boolean(tmp_path: Path) -> None:
    """The in-process check is the default; a quoted "false" must not silently mean true."""
    assert load_config(None).fast_verify is True
    path = tmp_path / "c.toml"
    path.write_text("fast_verify = false\n")
    assert load_config(path).fast_verify is False
    path.write_text('fast_verify = "false"\n')
    with pytest.raises(ConfigError, match="fast_verify must be true or false"):
        load_config(path)
