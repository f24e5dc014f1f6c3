"""packaging/pacswarm.toml documents every key with its default: keep it true."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from pacswarm.config import Config, config_keys, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "packaging" / "pacswarm.toml"
#: Keys whose example value is an illustration, not the default.
ILLUSTRATED = {"mirrors", "bootstrap", "data_dir"}


def _uncommented(tmp_path: Path) -> tuple[Path, set[str]]:
    keys: set[str] = set()
    lines = []
    table = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"#\[(\w+)\]$", line)
        if header:
            table = header.group(1) + "."
            line = line[1:]
        match = re.match(r"#(\w+) = ", line)
        if match and table + match.group(1) not in ILLUSTRATED:
            keys.add(table + match.group(1))
            line = line[1:]
        lines.append(line)
    path = tmp_path / "pacswarm.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, keys


def test_every_key_is_documented_with_its_default(tmp_path: Path) -> None:
    path, keys = _uncommented(tmp_path)
    assert keys | ILLUSTRATED == set(config_keys())
    loaded, default = asdict(load_config(path)), asdict(Config())
    for field in default:
        if field not in {"data_dir", "mirrorlist_explicit"}:
            assert loaded[field] == default[field], field
