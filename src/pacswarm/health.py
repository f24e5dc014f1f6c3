"""Mirror health: which mirrors to try, in which order. Pure; the clock is passed in.

Mirrors keep their mirrorlist order (the user ranked them, often with rankmirrors). A mirror
that errors, refuses or stalls is *penalised*: it moves behind the healthy ones until its
penalty expires. Penalised mirrors are still tried last rather than never, so a node whose
every mirror failed once is not stuck offline for the whole penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MirrorState:
    url: str
    penalised_until: float = 0.0
    failures: int = 0
    last_error: str = ""


@dataclass
class MirrorHealth:
    urls: list[str]
    penalty: float
    _states: dict[str, MirrorState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._states = {url: MirrorState(url) for url in self.urls}

    def ordered(self, now: float) -> list[str]:
        """Healthy mirrors in mirrorlist order, then penalised ones, soonest-forgiven first."""
        healthy = [u for u in self.urls if self._states[u].penalised_until <= now]
        sick = sorted(
            (u for u in self.urls if self._states[u].penalised_until > now),
            key=lambda u: self._states[u].penalised_until,
        )
        return healthy + sick

    def failed(self, url: str, reason: str, now: float) -> None:
        """Penalise ``url``; repeated failures double the penalty, up to 16 times the base."""
        state = self._states.get(url)
        if state is None:
            return
        state.failures += 1
        state.last_error = reason
        factor = 2 ** min(state.failures - 1, 4)
        state.penalised_until = now + self.penalty * factor

    def succeeded(self, url: str, now: float) -> None:
        """A transfer from ``url`` went well: forget its past failures, once its penalty is over.

        A success does not cut a running penalty short: a mirror that just sent a corrupt
        package may well deliver other files fine, and must still be tried last for a while.
        """
        state = self._states.get(url)
        if state is not None and state.penalised_until <= now:
            state.failures = 0
            state.last_error = ""

    def track(self, url: str) -> None:
        """Start keeping the health of ``url`` (for sources that appear while running)."""
        if url not in self._states:
            self._states[url] = MirrorState(url)
            self.urls.append(url)

    def state(self, url: str) -> MirrorState:
        return self._states[url]
