"""packaging/pacswarm.service: systemd accepts it, and its sandbox leaves the node what it needs.

This machine runs no systemd as PID 1, so the service is not started here. What is checked:

* ``systemd-analyze verify`` (systemd's own parser and loader) reports nothing, on a copy of
  the unit whose ExecStart= points at the launcher installed by pacman into a side root (the
  only line changed: verify insists that the command exists);
* ``systemd-analyze security --offline`` rates the sandbox "OK" or better;
* the sandbox still lets the node write its state, read the keyring and listen
  (tests/pkgbuild/unitfile.py), for the example config the package installs; and that
  reading does catch the sandboxes that would break the node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pacswarm.config import load_config
from tests.pkgbuild.unitfile import (
    exec_option,
    network_problems,
    parse_unit,
    read_problems,
    state_problems,
)

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "pacswarm.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
#: The first test on the installed unit may pay for the package build (about a minute).
build_timeout = pytest.mark.timeout(900)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def _unit_with_exec(tmp_path: Path, root: Path) -> Path:
    """The unit pacman installed into ``root``, with ExecStart='s /usr/bin/pacswarm replaced
    by the launcher installed next to it (the one line changed)."""
    text = (root / "usr/lib/systemd/system/pacswarm.service").read_text()
    assert text == UNIT.read_text()
    launcher = root / "usr/bin/pacswarm"
    changed = text.replace("ExecStart=/usr/bin/pacswarm ", f"ExecStart={launcher} ")
    assert len(set(changed.splitlines()) - set(text.splitlines())) == 1
    copy = tmp_path / "pacswarm.service"
    copy.write_text(changed)
    return copy


@needs_analyze
@build_timeout
def test_systemd_analyze_verify_reports_nothing(tmp_path: Path, installed_root: Path) -> None:
    proc = _analyze("verify", "--man=no", str(_unit_with_exec(tmp_path, installed_root)))
    # verify exits 0 on unknown keys and bad values (it ignores them): any output is a fault.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@needs_analyze
@build_timeout
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path, installed_root: Path) -> None:
    """The check above is not blind: a misspelt directive and a bad value are reported."""
    unit = _unit_with_exec(tmp_path, installed_root)
    unit.write_text(
        unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes\nRestrictRealtime=maybe")
    )
    proc = _analyze("verify", "--man=no", str(unit))
    assert "ProtectHom" in proc.stderr and "maybe" in proc.stderr


@needs_analyze
@build_timeout
def test_systemd_analyze_security_rates_the_sandbox_ok(
    tmp_path: Path, installed_root: Path
) -> None:
    proc = _analyze(
        "security", "--offline=yes", "--no-pager", str(_unit_with_exec(tmp_path, installed_root))
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for pacswarm\.service: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout
    assert match.group(2) in {"SAFE", "OK"}, proc.stdout


def _problems(unit_text: str) -> list[str]:
    """What the unit's sandbox would deny the node, running the example config the package
    installs as /etc/pacswarm/pacswarm.toml."""
    unit = parse_unit(unit_text)
    assert exec_option(unit, "--config") == "/etc/pacswarm/pacswarm.toml"
    data_dir = exec_option(unit, "--data-dir")
    config = load_config(PACKAGING / "pacswarm.toml", {"data_dir": data_dir})
    sysusers = (PACKAGING / "pacswarm.sysusers").read_text()
    tmpfiles = (PACKAGING / "pacswarm.tmpfiles").read_text()
    return [
        *state_problems(unit, sysusers, tmpfiles),
        *read_problems(unit, config),
        *network_problems(unit, config),
    ]


def test_sandbox_lets_the_node_write_state_read_the_keyring_and_listen() -> None:
    assert _problems(UNIT.read_text()) == []


def _edit(text: str, directives: dict[str, str | None]) -> str:
    """``text`` with each directive's line set to the given value (None: removed); a
    directive the unit lacks is added at the end of [Service]."""
    for key, value in directives.items():
        line = None if value is None else f"{key}={value}"
        pattern = re.compile(rf"^{key}=.*$\n?", re.M)
        if pattern.search(text):
            text = pattern.sub("" if line is None else line + "\n", text, count=1)
        elif line is not None:
            text = text.replace("\n[Install]", f"{line}\n\n[Install]", 1)
    return text


@pytest.mark.parametrize(
    ("directives", "problem"),
    [
        # StateDirectory= alone keeps the state writable under ProtectSystem=strict, but
        # without it and ReadWritePaths= the node cannot write its data.
        ({"ReadWritePaths": None}, None),
        ({"ReadWritePaths": None, "StateDirectory": None}, "/var/lib/pacswarm is read-only"),
        ({"ReadWritePaths": None, "StateDirectory": "other"}, "/var/lib/pacswarm is read-only"),
        ({"ProtectSystem": "full", "ReadOnlyPaths": "/var/lib/pacswarm"}, "is read-only"),
        ({"ReadOnlyPaths": "/var/lib"}, None),  # the deeper StateDirectory= wins
        ({"InaccessiblePaths": "/var/lib"}, "/var/lib/pacswarm is hidden"),  # nothing nests
        ({"InaccessiblePaths": "/etc/pacman.d"}, "keyring /etc/pacman.d/gnupg is hidden"),
        ({"TemporaryFileSystem": "/etc:ro"}, "mirrorlist /etc/pacman.d/mirrorlist is hidden"),
        ({"RestrictAddressFamilies": "AF_INET AF_UNIX AF_NETLINK"}, "forbids AF_INET6"),
        ({"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}, "forbids AF_NETLINK"),
        ({"RestrictAddressFamilies": "~AF_UNIX"}, "forbids AF_UNIX"),
        ({"PrivateNetwork": "yes"}, "PrivateNetwork"),
        ({"IPAddressDeny": "any"}, "IPAddressDeny"),
        ({"SystemCallFilter": "@basic-io"}, "SystemCallFilter"),
        ({"User": "swarm"}, "not created by the sysusers"),
    ],
)
def test_sandbox_reading_catches_what_would_break_the_node(
    directives: dict[str, str | None], problem: str | None
) -> None:
    problems = _problems(_edit(UNIT.read_text(), directives))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_a_port_below_1024_needs_the_capability() -> None:
    """The example config with listen = 127.0.0.1:80 needs CAP_NET_BIND_SERVICE."""
    unit = parse_unit(UNIT.read_text())
    config = load_config(PACKAGING / "pacswarm.toml", {"listen": "127.0.0.1:80"})
    assert any("CAP_NET_BIND_SERVICE" in p for p in network_problems(unit, config))
    # What the unit's comment says to add is enough.
    text = _edit(
        UNIT.read_text(),
        {
            "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
            "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        },
    )
    assert network_problems(parse_unit(text), config) == []
