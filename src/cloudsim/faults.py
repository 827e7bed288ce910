"""Failure injection, added latency and the request log."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: Faults that act on a server build instead of on the HTTP answer.
BUILD_FAULTS = frozenset({"build_stuck", "build_error", "error_after_build"})
#: Faults that break the connection instead of answering.
RESET = "reset"


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad path pattern {pattern!r}: {exc}") from exc


def _method_matches(rule_method: str, method: str) -> bool:
    return rule_method in ("*", "") or rule_method.upper() == method


@dataclass(slots=True)
class FaultRule:
    """A fault to inject into matching requests.

    ``kind`` is an HTTP status (``"500"``, ``"503"``, ``"401"``, ``"409"``, ...),
    ``"reset"`` (connection reset), or a build fault: ``"build_stuck"`` (stays in BUILD),
    ``"build_error"`` (ERROR while building) or ``"error_after_build"`` (ACTIVE, then ERROR).
    ``times`` is how many matches it hits (None = unlimited), ``rate`` the chance of hitting
    each match, ``skip`` how many matches to let through first.  ``name`` restricts build
    faults to servers whose name matches that regex.
    """

    id: int
    kind: str
    method: str = "*"
    path: str = ""
    times: int | None = 1
    rate: float = 1.0
    skip: int = 0
    retry_after: float | None = None
    message: str | None = None
    name: str | None = None
    hits: int = 0
    regex: re.Pattern[str] = field(default_factory=lambda: re.compile(""))
    name_regex: re.Pattern[str] | None = None

    @property
    def status(self) -> int:
        """The HTTP status of a status fault (0 for other kinds)."""
        return int(self.kind) if self.kind.isdigit() else 0

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view for the control API."""
        return {
            "id": self.id,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "times": self.times,
            "rate": self.rate,
            "skip": self.skip,
            "retry_after": self.retry_after,
            "message": self.message,
            "name": self.name,
            "hits": self.hits,
        }


@dataclass(slots=True)
class LatencyRule:
    """Extra real seconds (plus up to ``jitter``) added to matching requests."""

    id: int
    seconds: float
    method: str = "*"
    path: str = ""
    jitter: float = 0.0
    regex: re.Pattern[str] = field(default_factory=lambda: re.compile(""))

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view for the control API."""
        return {
            "id": self.id,
            "seconds": self.seconds,
            "method": self.method,
            "path": self.path,
            "jitter": self.jitter,
        }


class Faults:
    """Holds the fault and latency rules; thread-safe on its own lock."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._latency: list[LatencyRule] = []
        self._ids = 0
        self._rng = random.Random(seed)

    def add_fault(
        self,
        kind: str | int,
        *,
        method: str = "*",
        path: str = "",
        times: int | None = 1,
        rate: float = 1.0,
        skip: int = 0,
        retry_after: float | None = None,
        message: str | None = None,
        name: str | None = None,
    ) -> FaultRule:
        """Add a fault rule and return it."""
        text = str(kind).lower()
        if (
            not (text.isdigit() and 400 <= int(text) <= 599)
            and text != RESET
            and text not in BUILD_FAULTS
        ):
            raise ValueError(f"unknown fault kind {kind!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self._ids += 1
            rule = FaultRule(
                id=self._ids,
                kind=text,
                method=method.upper(),
                path=path,
                times=times,
                rate=rate,
                skip=skip,
                retry_after=retry_after,
                message=message,
                name=name,
                regex=_compile(path),
                name_regex=_compile(name) if name else None,
            )
            self._rules.append(rule)
            return rule

    def add_latency(
        self, seconds: float, *, method: str = "*", path: str = "", jitter: float = 0.0
    ) -> LatencyRule:
        """Add a latency rule and return it."""
        if seconds < 0 or jitter < 0:
            raise ValueError("latency must not be negative")
        with self._lock:
            self._ids += 1
            rule = LatencyRule(
                id=self._ids,
                seconds=seconds,
                method=method.upper(),
                path=path,
                jitter=jitter,
                regex=_compile(path),
            )
            self._latency.append(rule)
            return rule

    def remove(self, rule_id: int) -> bool:
        """Remove a fault or latency rule by id."""
        with self._lock:
            before = len(self._rules) + len(self._latency)
            self._rules = [r for r in self._rules if r.id != rule_id]
            self._latency = [r for r in self._latency if r.id != rule_id]
            return before != len(self._rules) + len(self._latency)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self._rules.clear()

    def clear_latency(self) -> None:
        """Remove every latency rule."""
        with self._lock:
            self._latency.clear()

    def faults(self) -> list[dict[str, Any]]:
        """Current fault rules."""
        with self._lock:
            return [r.as_dict() for r in self._rules]

    def latencies(self) -> list[dict[str, Any]]:
        """Current latency rules."""
        with self._lock:
            return [r.as_dict() for r in self._latency]

    def _take(self, rule: FaultRule) -> bool:
        if rule.skip > 0:
            rule.skip -= 1
            return False
        if rule.rate < 1.0 and self._rng.random() >= rule.rate:
            return False
        rule.hits += 1
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                self._rules.remove(rule)
        return True

    def match_request(self, method: str, path: str) -> FaultRule | None:
        """The HTTP-level fault (status or reset) to apply to this request, if any."""
        with self._lock:
            for rule in list(self._rules):
                if rule.kind in BUILD_FAULTS or not _method_matches(rule.method, method):
                    continue
                if rule.regex.search(path) and self._take(rule):
                    return rule
        return None

    def match_build(self, path: str, server_name: str) -> FaultRule | None:
        """The build fault for a server being created through ``path``, if any."""
        with self._lock:
            for rule in list(self._rules):
                if rule.kind not in BUILD_FAULTS:
                    continue
                if not rule.regex.search(path):
                    continue
                if rule.name_regex is not None and not rule.name_regex.search(server_name):
                    continue
                if self._take(rule):
                    return rule
        return None

    def latency_for(self, method: str, path: str) -> float:
        """Real seconds to wait before answering (first matching rule)."""
        with self._lock:
            for rule in self._latency:
                if _method_matches(rule.method, method) and rule.regex.search(path):
                    return rule.seconds + (
                        self._rng.uniform(0, rule.jitter) if rule.jitter else 0.0
                    )
        return 0.0


@dataclass(slots=True)
class LoggedRequest:
    """One entry of the request log."""

    seq: int
    time: float
    method: str
    path: str
    query: str
    status: int
    duration: float
    service: str
    route: str
    client: str
    fault: str | None = None
    #: CPU seconds the answering thread spent on it (what a loaded machine does not stretch).
    cpu: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view for the control API."""
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 3),
            "cpu_ms": round(self.cpu * 1000, 3),
            "service": self.service,
            "route": self.route,
            "client": self.client,
            "fault": self.fault,
        }


class RequestLog:
    """A bounded log of answered requests plus unbounded counters."""

    def __init__(self, size: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[LoggedRequest] = deque(maxlen=size)
        self._seq = 0
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.by_service: Counter[str] = Counter()

    def record(
        self,
        *,
        method: str,
        path: str,
        query: str,
        status: int,
        started: float,
        service: str,
        route: str,
        client: str,
        fault: str | None = None,
        cpu_started: float | None = None,
    ) -> None:
        """Append an entry; ``started`` is the time.time() the request arrived and
        ``cpu_started`` the answering thread's ``time.thread_time()`` then."""
        now = time.time()
        cpu = time.thread_time() - cpu_started if cpu_started is not None else 0.0
        with self._lock:
            self._seq += 1
            self._entries.append(
                LoggedRequest(
                    self._seq,
                    started,
                    method,
                    path,
                    query,
                    status,
                    now - started,
                    service,
                    route or f"{method} {path}",
                    client,
                    fault,
                    cpu,
                )
            )
            self.by_route[route or f"{method} {path}"] += 1
            self.by_status[status] += 1
            self.by_service[service] += 1

    def entries(
        self,
        *,
        since: int = 0,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        limit: int | None = None,
    ) -> list[LoggedRequest]:
        """Entries after sequence ``since`` matching the filters (path is a regex)."""
        regex = _compile(path) if path else None
        with self._lock:
            out = [
                e
                for e in self._entries
                if e.seq > since
                and (method is None or e.method == method.upper())
                and (regex is None or regex.search(e.path))
                and (status is None or e.status == status)
            ]
        return out[-limit:] if limit else out

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (0 when empty)."""
        with self._lock:
            return self._seq

    def counts(self) -> dict[str, Any]:
        """Totals by route template, status and service."""
        with self._lock:
            return {
                "total": sum(self.by_status.values()),
                "by_route": dict(self.by_route),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "by_service": dict(self.by_service),
            }

    def clear(self) -> None:
        """Forget every entry and counter."""
        with self._lock:
            self._entries.clear()
            self.by_route.clear()
            self.by_status.clear()
            self.by_service.clear()
