"""Results of the benchmark and the printed tables (ratios and targets, never pass/fail)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MiB = 1 << 20
PS, NGX = "pacswarm", "nginx"
PS_OFF = "pacswarm-gpg"  # the same node with fast_verify = false: every signature to gpg


@dataclass
class Series:
    """One server's repetitions of one row."""

    mbps: list[float] = field(default_factory=list)  # one per repetition
    ttfb_ms: list[float] = field(default_factory=list)  # one per request
    tail_ms: list[float] = field(default_factory=list)  # last 64 KiB, one per request
    server_cpu: float = 0.0  # the server process(es) themselves, with the work left behind
    run_cpu: float = 0.0  # the server process itself while the clients ran (for ps cores)
    helper_cpu: float = 0.0  # helper processes they ran (pacswarm: gpg)
    client_cpu: float = 0.0
    wall: float = 0.0
    nbytes: int = 0
    in_process: float = 0.0  # signatures the node decided in-process (its /metrics)
    by_gpg: float = 0.0  # signatures it gave to gpg
    checks_counted: bool = False  # the node has the counter at all

    def add_checks(self, before: dict[str, float] | None, after: dict[str, float] | None) -> None:
        if before is None or after is None:
            return
        self.checks_counted = True
        self.in_process += after.get("in-process", 0.0) - before.get("in-process", 0.0)
        self.by_gpg += after.get("gpg", 0.0) - before.get("gpg", 0.0)

    def in_process_share(self) -> str:
        decided = self.in_process + self.by_gpg
        if not self.checks_counted or decided <= 0:
            return "n/a"
        return f"{100 * self.in_process / decided:.0f}%"

    def add(
        self,
        nbytes: int,
        wall: float,
        cpu: tuple[float, float],
        client_cpu: float,
        run_cpu: float | None = None,
    ) -> None:
        """``cpu``: (server, helpers) until the server was idle; ``run_cpu``: the server's
        own CPU while the clients ran (default: ``cpu[0]``, nothing was left behind)."""
        self.mbps.append(nbytes / wall / 1e6)
        self.nbytes += nbytes
        self.wall += wall
        self.server_cpu += max(0.0, cpu[0])
        self.run_cpu += max(0.0, cpu[0] if run_cpu is None else run_cpu)
        self.helper_cpu += max(0.0, cpu[1])
        self.client_cpu += client_cpu


@dataclass
class Row:
    size: int
    clients: int
    case: str  # "hit" or "miss"
    reps: int  # planned repetitions
    series: dict[str, Series] = field(default_factory=dict)
    note: str = ""

    def of(self, name: str) -> Series:
        return self.series.setdefault(name, Series())


@dataclass
class Calibration:
    size: int
    ours_mbps: float
    curl_mbps: float | None
    client_cpu_per_gb: float


def target(case: str, size: int) -> float:
    """Issue 10's targets for misses (0.5x at 1 MiB, 0.8x from 20 MiB); the hits' targets."""
    if case == "miss":
        return 0.8 if size >= 20 * MiB else 0.5
    return 0.9 if size >= 20 * MiB else 0.6


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = "8.1f") -> str:
    if value is not None:
        return format(value, spec)
    return format("n/a", ">" + spec.split(".")[0].lstrip("+"))


def size_label(size: int) -> str:
    return f"{size / MiB:g} MiB"


def _per_gb(cpu: float, nbytes: int) -> float | None:
    return cpu / (nbytes / 1e9) if nbytes else None


def _spread(ps: Series, ngx: Series) -> str:
    """Lowest and highest ratio of the paired repetitions (same rep, back to back)."""
    paired = [p / n for p, n in zip(ps.mbps, ngx.mbps, strict=False) if n]
    return f"{min(paired):.2f}-{max(paired):.2f}" if paired else "n/a"


def _row_line(row: Row, name: str) -> str:
    ps, ngx = row.series.get(name, Series()), row.series.get(NGX, Series())
    done = min(len(s.mbps) for s in (ps, ngx) if s.mbps) if ps.mbps or ngx.mbps else 0
    partial = f"({done} of {row.reps} reps)" if done < row.reps else ""
    note = " ".join(filter(None, [row.note, partial]))
    ps_m, ngx_m = _median(ps.mbps), _median(ngx.mbps)
    ratio = ps_m / ngx_m if ps_m is not None and ngx_m else None
    goal = target(row.case, row.size)
    mark = "*" if ratio is not None and ratio < goal else " "
    ps_cpu = _fmt(_per_gb(ps.server_cpu, ps.nbytes), "5.2f")
    gpg_cpu = _fmt(_per_gb(ps.helper_cpu, ps.nbytes), "4.2f")
    ngx_cpu = _fmt(_per_gb(ngx.server_cpu, ngx.nbytes), "5.2f")
    busy = ps.run_cpu / ps.wall if ps.wall else None
    clients = [s.client_cpu / s.wall for s in (ps, ngx) if s.wall]
    client = max(clients) if clients else None
    return (
        f"{size_label(row.size):>8} {row.clients:>7} {row.case:>5} {_fmt(ps_m, '9.0f')} "
        f"{_fmt(ngx_m, '9.0f')} {_fmt(ratio, '6.2f')}{mark} {_spread(ps, ngx):>9} "
        f"{'>= ' + format(goal, '.1f'):>7}  "
        f"{ps_cpu}+{gpg_cpu} /{ngx_cpu} {_fmt(busy, '8.2f')} {_fmt(client, '7.2f')} "
        f"{ps.in_process_share():>7}  {note}"
    )


def print_rows(rows: list[Row], client: str, name: str = PS, title: str = "") -> None:
    """The table of ``name`` (a pacswarm node) against nginx; rows it was not run in are left
    out (the fast-path-off node runs the misses only)."""
    rows = [r for r in rows if r.series.get(name, Series()).mbps or name == PS]
    if not rows:
        return
    print()
    print(f"{name}{title} vs nginx proxy_store (Arch Wiki recipe), same origin, 127.0.0.1")
    print("MB/s = 10^6 bytes/s, median over repetitions (1 client: back-to-back GETs on one")
    print("keep-alive connection; N clients: total bytes / wall time of all clients);")
    print(f"client: {client}.")
    print()
    print(
        f"{'size':>8} {'clients':>7} {'case':>5} {'pacswarm':>9} {'nginx':>9} {'ratio':>7} "
        f"{'rep range':>9} {'target':>7}  {'CPU s/GB ps+gpg/ngx':>19} {'ps cores':>8} "
        f"{'client':>7} {'in-proc':>7}"
    )
    for row in rows:
        print(_row_line(row, name))
    print()
    print("ratio = pacswarm/nginx of the medians; * = below target in this run; rep range =")
    print("lowest-highest ratio of paired repetitions (run back to back), to judge the noise.")
    print("reps: misses as given, hits 2 x reps + 1. CPU s/GB = server CPU seconds")
    print("per GB served: pacswarm's own process + its gpg children / nginx master+worker;")
    print("for pacswarm's misses counted until the node is idle again: the IPFS import and")
    print("announcement a miss leaves for after the downloads are part of its cost.")
    print("ps cores = pacswarm's own CPU s / wall s while the clients ran (near 1.0 = CPU")
    print("bound: one event loop).")
    print("client = cores used by the benchmark's client threads (max of both sides).")
    print("in-proc = share of the packages whose signature pacswarm decided in-process (its")
    print("/metrics pacswarm_signature_checks_total{path=...}); n/a: the node does not count it.")


def print_ttfb(rows: list[Row], name: str = PS) -> None:
    lines = []
    for row in rows:
        if row.case != "miss" or row.clients != 1:
            continue
        ps, ngx = row.series.get(name, Series()), row.series.get(NGX, Series())
        if not ps.mbps and name != PS:
            continue
        ps_t, ngx_t = _median(ps.ttfb_ms), _median(ngx.ttfb_ms)
        diff = ps_t - ngx_t if ps_t is not None and ngx_t is not None else None
        mark = "*" if diff is not None and diff > 10 else " "
        lines.append(
            f"{size_label(row.size):>8} {_fmt(ps_t, '9.2f')} {_fmt(ngx_t, '9.2f')} "
            f"{_fmt(diff, '+9.2f')}{mark} {'<= +10':>8}   "
            f"{_fmt(_median(ps.tail_ms), '9.2f')} {_fmt(_median(ngx.tail_ms), '9.2f')}"
        )
    if lines:
        print()
        print(f"{name}: cache miss, 1 client, median ms: time to first body byte; and how")
        print("long the last 64 KiB took (held back until sha256 + signature are verified)")
        print(
            f"{'size':>8} {'pacswarm':>9} {'nginx':>9} {'diff':>9}  {'target':>8}   "
            f"{'tail ps':>9} {'tail ngx':>9}"
        )
        print("\n".join(lines))


def print_calibration(cals: list[Calibration]) -> None:
    if not cals:
        return
    print()
    print("client check: 1 client straight from the origin nginx (static, sendfile)")
    print(f"{'size':>8} {'ours MB/s':>10} {'curl MB/s':>10} {'client CPU s/GB':>16}")
    for c in cals:
        print(
            f"{size_label(c.size):>8} {c.ours_mbps:>10.0f} {_fmt(c.curl_mbps, '10.0f')} "
            f"{c.client_cpu_per_gb:>16.2f}"
        )
