"""``pacswarm cid``: the CIDs kubo's ``ipfs add --cid-version=1`` prints, one line per file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacswarm.cli import main


def test_known_vector_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hello = tmp_path / "hello.txt"
    hello.write_bytes(b"hello world\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert main(["cid", str(hello), str(empty)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4  {hello}",
        f"bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku  {empty}",
    ]
    assert main(["cid", str(tmp_path / "nope"), str(hello)]) == 1
    captured = capsys.readouterr()
    assert "nope: cannot read" in captured.err
    assert captured.out.startswith("bafkrei")
