"""What the systemd unit's sandbox leaves the node: a reading of the unit, no systemd needed.

Why: this machine has no systemd as PID 1, so the service cannot be started under its real
sandbox here. ``systemd-analyze verify`` checks that every directive parses; this module
checks that the directives, taken together, still let the node do its three jobs:

* write its state: the ``--data-dir`` of ExecStart is writable (ProtectSystem=strict makes
  everything read-only but ReadWritePaths= and the *Directory= paths) and owned by User=;
* read the pacman keyring and the mirrorlist: not hidden (InaccessiblePaths=, ProtectHome=,
  PrivateTmp=, TemporaryFileSystem=);
* listen and connect: IPv4/IPv6 sockets allowed, AF_UNIX (asyncio's self-pipe, gpg's pipes)
  and AF_NETLINK (mDNS lists the interfaces); no private network or IP deny-list; ports below
  1024 only with CAP_NET_BIND_SERVICE.

Pure logic: it reads text and a :class:`pacswarm.config.Config`, and returns problems.
"""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

from pacswarm.config import Config

#: section -> key -> values in order (an empty assignment resets the list, as in systemd).
Unit = dict[str, dict[str, list[str]]]

#: Address families the node needs, and why (see the module docstring).
NEEDED_FAMILIES = ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK")
#: What ProtectHome= hides (yes, tmpfs) or makes read-only (read-only).
_HOME_PATHS = ("/home", "/root", "/run/user")
_SEEN = {"ro": "read-only", "hidden": "hidden", "rw": "writable"}


def parse_unit(text: str) -> Unit:
    """Sections and directives of a unit file (comments, continuations, resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical.append(line[:-1])
            continue
        line = " ".join([*logical, line])
        logical = []
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if value:
            section.setdefault(key, []).append(value)
        else:
            section[key] = []
    return unit


def words(unit: Unit, key: str, section: str = "Service") -> list[str]:
    """Every whitespace-separated word of every value of ``key``."""
    return [w for value in unit.get(section, {}).get(key, []) for w in value.split()]


def last(unit: Unit, key: str, default: str = "", section: str = "Service") -> str:
    """The value in effect for a single-valued ``key``."""
    values = unit.get(section, {}).get(key, [])
    return values[-1] if values else default


def exec_option(unit: Unit, option: str) -> str | None:
    """The value of ``option`` (``--data-dir``) on the ExecStart= command line."""
    argv = shlex.split(last(unit, "ExecStart"))
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


#: What ProtectSystem= makes read-only, per value.
_PROTECT_SYSTEM = {
    "strict": ("/",),
    "full": ("/usr", "/boot", "/efi", "/etc"),
    "yes": ("/usr", "/boot", "/efi"),
    "true": ("/usr", "/boot", "/efi"),
}
#: Ties between rules on one path go to the stricter.
_STRICTNESS = {"rw": 0, "ro": 1, "hidden": 2}


def _rules(unit: Unit) -> list[tuple[PurePosixPath, str]]:
    """(path, access) of every sandbox rule: "rw", "ro" or "hidden" (inaccessible, or
    replaced by an empty or private directory)."""
    rules = [(p, "ro") for p in _PROTECT_SYSTEM.get(last(unit, "ProtectSystem", "no"), ())]
    home = last(unit, "ProtectHome", "no")
    if home != "no":
        rules += [(p, "ro" if home == "read-only" else "hidden") for p in _HOME_PATHS]
    if last(unit, "PrivateTmp", "no") in {"yes", "true"}:
        rules += [("/tmp", "hidden"), ("/var/tmp", "hidden")]
    for key, top in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache"),
                     ("LogsDirectory", "/var/log")):  # fmt: skip
        rules += [(f"{top}/{d}", "rw") for d in words(unit, key)]
    rules += [(p, "rw") for p in words(unit, "ReadWritePaths")]
    rules += [(p, "ro") for p in words(unit, "ReadOnlyPaths")]
    rules += [(p.split(":")[0], "hidden") for p in words(unit, "TemporaryFileSystem")]
    return [(PurePosixPath(p.lstrip("-+")), access) for p, access in rules]


def access(unit: Unit, path: str) -> str:
    """What the service sees at ``path``: "rw", "ro" or "hidden".

    InaccessiblePaths= hides everything below it; otherwise the deepest rule covering the path
    decides (systemd.exec(5): nest ReadWritePaths= inside ReadOnlyPaths= for writable
    subdirectories; nothing nests inside InaccessiblePaths=).
    """
    target = PurePosixPath(path)
    for hidden in words(unit, "InaccessiblePaths"):
        top = PurePosixPath(hidden.lstrip("-+"))
        if top == target or top in target.parents:
            return "hidden"
    covering = [(len(p.parts), _STRICTNESS[a], a) for p, a in _rules(unit)
                if p == target or p in target.parents]  # fmt: skip
    return max(covering)[2] if covering else "rw"


def state_problems(unit: Unit, sysusers: str, tmpfiles: str) -> list[str]:
    """Why the node could not write its data directory, if it could not."""
    data_dir = exec_option(unit, "--data-dir")
    if data_dir is None:
        return ["ExecStart= has no --data-dir: the service user's default is under its home"]
    problems = []
    seen = access(unit, data_dir)
    if seen != "rw":
        problems.append(f"the data directory {data_dir} is {_SEEN[seen]} in the sandbox")
    user = last(unit, "User", "root")
    if user != "root" and not re.search(rf"^u\s+{re.escape(user)}\s", sysusers, re.M):
        problems.append(f"User={user} is not created by the sysusers file")
    owned = re.search(rf"^d\s+{re.escape(data_dir)}\s+\S+\s+{re.escape(user)}\s", tmpfiles, re.M)
    if words(unit, "StateDirectory") == [] and not owned:
        problems.append(f"nothing makes {data_dir} belong to {user}")
    return problems


def read_problems(unit: Unit, config: Config) -> list[str]:
    """Why the node could not read the pacman keyring or the mirrorlist, if it could not."""
    return [
        f"the {what} {path} is hidden in the sandbox"
        for what, path in (("keyring", config.gpgdir), ("mirrorlist", config.mirrorlist))
        if access(unit, str(path)) == "hidden"
    ]


def _tcp_ports(config: Config) -> list[int]:
    ports = [config.listen_port, config.gateway_port]
    for addr in config.p2p_listen:
        match = re.search(r"/tcp/(\d+)", addr)
        if match:
            ports.append(int(match.group(1)))
    return ports


def network_problems(unit: Unit, config: Config) -> list[str]:
    """Why the node could not listen, dial mirrors and peers, or run mDNS, if it could not."""
    problems = []
    families = words(unit, "RestrictAddressFamilies")
    if families:
        denied = families[0].startswith("~")
        listed = {f.lstrip("~") for f in families}
        for family in NEEDED_FAMILIES:
            if (family in listed) == denied:
                problems.append(f"RestrictAddressFamilies= forbids {family}")
    if last(unit, "PrivateNetwork", "no") in {"yes", "true"}:
        problems.append("PrivateNetwork=yes: no network but loopback")
    if words(unit, "IPAddressDeny") and not words(unit, "IPAddressAllow"):
        problems.append("IPAddressDeny= without IPAddressAllow= blocks mirrors and peers")
    if words(unit, "SocketBindDeny"):
        problems.append("SocketBindDeny= may forbid the listen ports")
    low = [p for p in _tcp_ports(config) if 0 < p < 1024]
    cap = "CAP_NET_BIND_SERVICE"
    bounding = unit.get("Service", {}).get("CapabilityBoundingSet")
    bounded = bounding is not None and cap not in words(unit, "CapabilityBoundingSet")
    if low and (cap not in words(unit, "AmbientCapabilities") or bounded):
        problems.append(f"ports {low} need {cap} in AmbientCapabilities= and the bounding set")
    filters = words(unit, "SystemCallFilter")
    if filters and not {"@system-service", "@network-io"} & set(filters):
        problems.append("SystemCallFilter= lacks @system-service (sockets, bind, listen)")
    return problems
