"""The data-plane prober: can a client reach the workload right now?

Filled by nobody: it is driven by ``chaos.recorder.Recorder`` (one prober per run),
which turns the prober's transitions into ``PROBE_FAIL``/``PROBE_OK`` timeline
events; ``chaos.rto`` reads those to compute the RTO.

Two layers:

- ``ProbeStateMachine`` is pure (no I/O, no clock): fed one probe outcome at a
  time, in send order, it returns the transitions. It is what the RTO definition
  rests on, so it is tested on synthetic data.
- ``Prober`` runs in its own thread with its own asyncio loop (entering the
  target's network namespace first, since ``setns`` is per thread). It sends an
  HTTP/1.0 GET every ``interval`` on a fixed schedule, whatever the answers do:
  every probe has its own timeout and probes overlap, so a hung workload does
  not slow the clock of measurement down. Outcomes complete out of order (a hung
  probe ends at its timeout, later ones may end sooner), so they are put back in
  send order before they reach the state machine.

Edge refinement. A fixed grid places an edge no closer than one interval: the
outage began somewhere between the last good probe and the first failed one.
So the prober also sends *edge probes*, ``edge_interval`` apart (2 ms by
default), between the grid's probes, but only near an edge:

- *hinted windows* (``expect_edge``): the runner knows when it injects and
  reverts a fault, and asks for edge probes from just before the act until the
  first change of outcome is seen (or the window ends). This is what pins the
  edges a harness causes: no probe sent after an edge can tell when it was, so
  the dense probes must already be going when it comes.
- *bursts after a failure*: the first failure after good answers is followed
  by ``burst`` seconds of edge probes. It cannot place the edge just seen, but
  it places the end of a short outage the harness does not cause (a restart
  within the burst). A success starts none: a workload that has just come back
  gets only the grid's load.

Edge probes are bounded, so that they do not become the fault:

- at most ``edge_in_flight`` of them in flight and not yet overdue: a slow
  workload is not flooded, while an overdue probe no longer holds the next one
  back (a partition's end must still be probed). Overdue means four times the
  workload's smoothed answer time (as TCP smooths its RTT; one interval until
  the first answer), kept within two edge intervals and one interval: a probe
  held up by something other than the workload (a SYN that met a TIME_WAIT
  socket of a server just gone, retried by the kernel two jiffies later) must
  not stop the edge probes just when the server comes back;
- a target that serves one connection at a time (``ProbeTarget.serial``: the
  harness's guests, whose ``nc`` loop is not listening between two answers)
  gets none: overlapping probes would be refused, failures the prober made;
- a token budget grows by ``edge_share`` per grid probe, capped at
  ``edge_reserve``: over any run the probe rate stays within ``1 + edge_share``
  of the grid's, plus that reserve. Bursts spend only its upper half, so a
  hinted window finds tokens left;
- edge probes do not count towards the ``good_needed`` streak (only its first
  one may start it): recovery still means that many grid intervals of good
  answers, however densely the edge was probed.

Every ``PROBE_FAIL``/``PROBE_OK`` carries ``bracket_ms``: the width of the
interval its edge is known to lie in (``chaos.rto`` reports it next to the RTO),
as clients see the workload. For a failure: from the last good probe's send (a
client asking then was served) to the failed probe's send. For a recovery:
from the latest proof of "down" (the last failed probe's send; its timeout
instead when that fell before the good answer, because a client holding that
connection got nothing until then) to the stamp.

A probe is good when the answer is HTTP 200 and the body is ``"<name> <instance>"``
(the second word is the instance identity; the first must be the workload name
when ``expect_name`` is given, so a stranger answering on a reused IP fails).

Time stamps (monotonic seconds from the injected ``Clock``):

- ``PROBE_FAIL`` is stamped at the *send* time of the first failed probe: the
  client asked at that moment and got no good answer.
- ``PROBE_OK`` is stamped at the earliest *answer* time among the N consecutive
  good probes (``ok_stamp="answered"``, the default), edge probes included: it is
  usually the first one's, but a probe sent later can be answered first (a SYN
  sent just before a server came back can meet a TIME_WAIT socket of the port
  and be retried by the kernel two jiffies later). A frozen workload answers
  probes queued during the freeze the moment it is thawed; stamping those at
  their send time would shorten the outage by up to one timeout. With
  ``ok_stamp="sent"`` the send time is used instead. Either way the data carries
  ``latency_ms`` (answer - send of the probe stamped), so the other stamp can be
  rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from chaos.netns import current_netns_fd, enter_netns, enter_netns_fd
from cluster.api import ProbeTarget
from core.clock import Clock, RealClock
from core.errors import HarnessError
from core.timeline import EventKind

__all__ = [
    "ProbeOutcome",
    "ProbeState",
    "ProbeStateMachine",
    "Prober",
    "Transition",
    "http_probe",
]

log = logging.getLogger(__name__)

# A health answer is one short line; anything bigger is not our endpoint.
_MAX_ANSWER = 64 * 1024


class ProbeState(enum.StrEnum):
    UNKNOWN = "unknown"  # no verdict yet (start)
    UP = "up"  # N consecutive good probes seen, no failure since
    DOWN = "down"  # a failure seen, fewer than N good probes since


@dataclass(frozen=True)
class ProbeOutcome:
    """One probe: when it was sent and answered, and what came back."""

    sent: float
    ok: bool
    instance: str | None = None
    answered: float | None = None  # None when it failed or was cut by the timeout
    reason: str = ""  # why it failed ("timeout", "refused", "http 503", ...)
    endpoint: str = ""  # host:port the probe went to
    edge: bool = False  # an edge probe (between grid probes), not a grid probe
    done: float | None = None  # when the outcome was known (answer, refusal, timeout)


@dataclass(frozen=True)
class Transition:
    """A state change the recorder writes to the timeline."""

    kind: EventKind
    at: float  # monotonic seconds
    message: str
    data: dict[str, str] = field(default_factory=dict)


class ProbeStateMachine:
    """Turns probe outcomes (fed in send order) into PROBE_FAIL / PROBE_OK.

    - ``PROBE_FAIL`` at the send time of the first failed probe after being up,
      or of the very first failed probe of the run.
    - ``PROBE_OK`` once ``good_needed`` consecutive good probes were seen, stamped
      at the earliest answer among them (see the module doc for which stamp), with
      ``data["instance"]``. Good probes of two different instances do not count
      as one streak: the instance that answered first is gone. Edge probes may
      start a streak but do not lengthen it.
    - Both carry ``data["bracket_ms"]`` when the other side of the edge was
      probed (the module doc says how it is bounded).
    - While up, a good answer from a new instance (a restart between two probes)
      gives a ``MARK`` ``instance_changed`` with the new instance, so a silent
      restart is not lost.
    """

    def __init__(self, good_needed: int = 5, ok_stamp: Literal["answered", "sent"] = "answered"):
        if good_needed < 1:
            raise HarnessError(f"good_needed must be >= 1, got {good_needed}")
        self.good_needed = good_needed
        self.ok_stamp = ok_stamp
        self.state = ProbeState.UNKNOWN
        self.instance: str | None = None  # instance of the last good probe
        self._streak: list[ProbeOutcome] = []
        self._earliest: ProbeOutcome | None = None  # earliest answer since the streak began
        self._last_at: float | None = None  # stamp of the last PROBE_* transition
        self.last: ProbeOutcome | None = None  # the outcome fed before this one
        self._last_fail: ProbeOutcome | None = None

    def _down_since(self, stamp: float) -> float | None:
        """The latest time the failures so far prove the workload was down."""
        f = self._last_fail
        if f is None:
            return None
        if f.reason == "timeout" and f.done is not None and f.done <= stamp:
            return max(f.sent, f.done)
        return f.sent

    def feed_outcome(self, o: ProbeOutcome) -> list[Transition]:
        prev, self.last = self.last, o
        if not o.ok:
            self._streak.clear()
            self._last_fail = o
            if self.state is ProbeState.DOWN:
                return []
            self.state = ProbeState.DOWN
            data = {"reason": o.reason}
            if o.endpoint:
                data["endpoint"] = o.endpoint
            # A PROBE_OK stamped at its answer time can lie after the send time
            # of a probe that fails next (a flap right after a thaw). Transitions
            # must stay in order on the timeline, or a reader sorting by time
            # would see the failure before the recovery it follows.
            at = o.sent if self._last_at is None else max(o.sent, self._last_at + 1e-6)
            self._last_at = at
            if prev is not None and prev.ok:
                # A client asking at prev.sent was served, one asking at o.sent
                # was not: the outage (as clients see it) began in between.
                data["bracket_ms"] = f"{max(0.0, at - prev.sent) * 1000:.2f}"
            return [Transition(EventKind.PROBE_FAIL, at, f"probe failed: {o.reason}", data)]

        if self.state is ProbeState.UP:
            if o.instance != self.instance:
                old, self.instance = self.instance, o.instance
                at = o.answered if o.answered is not None else o.sent
                return [
                    Transition(
                        EventKind.MARK,
                        at,
                        f"instance changed without a failed probe: {old} -> {o.instance}",
                        {"event": "instance_changed", "instance": o.instance or ""},
                    )
                ]
            return []

        if self._streak and self._streak[0].instance != o.instance:
            self._streak.clear()
        e = self._earliest
        if not self._streak or e is None or _answers_before(o, e):
            self._earliest = o
        if not self._streak or not o.edge:
            self._streak.append(o)
        self.instance = o.instance
        if len(self._streak) < self.good_needed:
            return []
        first = self._streak[0]
        if self.ok_stamp == "answered" and self._earliest is not None:
            first = self._earliest
        self._streak.clear()
        self.state = ProbeState.UP
        at = first.answered if self.ok_stamp == "answered" and first.answered else first.sent
        if self._last_at is not None:
            at = max(at, self._last_at + 1e-6)
        self._last_at = at
        latency = (first.answered - first.sent) if first.answered is not None else 0.0
        data = {"instance": o.instance or "", "latency_ms": f"{latency * 1000:.1f}"}
        if o.endpoint:
            data["endpoint"] = o.endpoint
        down = self._down_since(at)
        if down is not None:
            data["bracket_ms"] = f"{max(0.0, at - down) * 1000:.2f}"
        return [Transition(EventKind.PROBE_OK, at, f"{self.good_needed} good probes", data)]

    def feed(
        self,
        send_time: float,
        ok: bool,
        instance: str | None = None,
        answered: float | None = None,
        reason: str = "",
    ) -> list[Transition]:
        """Feed one outcome; returns the transitions it caused (often none)."""
        return self.feed_outcome(ProbeOutcome(send_time, ok, instance, answered, reason))


def _answers_before(a: ProbeOutcome, b: ProbeOutcome) -> bool:
    """``a`` was answered before ``b`` (an outcome without an answer time is last)."""
    return a.answered is not None and (b.answered is None or a.answered < b.answered)


def _parse(answer: bytes, expect_name: str | None) -> tuple[bool, str | None, str]:
    """(good, instance, reason) for a raw HTTP answer."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = answer.partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0].decode("latin-1", "replace").strip()
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        return False, None, "bad answer" if answer else "closed without answer"
    if parts[1] != "200":
        return False, None, f"http {parts[1]}"
    words = body.decode("utf-8", "replace").split()
    if len(words) < 2:
        return False, None, "bad body"
    if expect_name is not None and words[0] != expect_name:
        return False, None, f"wrong workload {words[0]!r}"
    return True, words[1], ""


def _request(target: ProbeTarget) -> bytes:
    """The request bytes; ``HarnessError`` for a header that would split it."""
    host = target.server_hostname or target.host
    lines = [f"GET {target.path} HTTP/1.0", f"Host: {host}", "User-Agent: rto-prober"]
    for key, value in target.headers:
        # A CR/LF in a header (a token pasted with its newline) would inject
        # lines into the request: refuse it loudly rather than send garbage.
        if any(c in key + value for c in "\r\n") or not key or ":" in key:
            raise HarnessError(f"probe header {key!r} is malformed (CR, LF or ':' in it)")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def http_probe(
    target: ProbeTarget, timeout: float, expect_name: str | None = None
) -> tuple[bool, str | None, str]:
    """One HTTP/1.0 GET with a hard deadline: (good, instance, reason).

    Runs in the calling thread's network namespace; never raises for network
    trouble (that is the measurement), only for programming errors. With
    ``target.tls`` the connection is HTTPS (the TLS handshake counts against
    the same deadline: a hung API server is a failed probe); ``target.headers``
    are sent as given.
    """
    writer: asyncio.StreamWriter | None = None
    request = _request(target)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            if target.tls is not None:
                # TLS on the open connection, not open_connection(ssl=...): a
                # timeout during that handshake left its transport unclosed
                # (Python 3.11), one socket per timed-out probe of a slow API
                # server. Here the writer exists and the finally closes it.
                await writer.start_tls(
                    target.tls, server_hostname=target.server_hostname or target.host
                )
            writer.write(request)
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while size <= _MAX_ANSWER:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        return _parse(b"".join(chunks), expect_name)
    except TimeoutError:
        return False, None, "timeout"
    except ConnectionRefusedError:
        return False, None, "refused"
    except ConnectionResetError:
        return False, None, "reset"
    except OSError as exc:
        return False, None, f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            # abort, not close: close() on TLS sends close_notify and waits (up
            # to 30 s) for the server's; a probe that timed out on a hung API
            # server never got one, and the prober's loop ended with that
            # socket still open (a ResourceWarning per probe). A probe has
            # nothing more to say: drop the connection at once.
            writer.transport.abort()


class Prober:
    """Probes ``target()`` every ``interval`` from its own thread.

    ``target`` is called again all the time (in a worker thread, so a slow
    backend does not shift the schedule): the workload moves when rescheduled.
    ``None`` means no endpoint, which is a failed probe. ``on_transition`` is
    called from the prober thread for every transition of the state machine.
    """

    def __init__(
        self,
        target: Callable[[], ProbeTarget | None],
        on_transition: Callable[[Transition], None],
        *,
        interval: float = 0.02,
        timeout: float = 0.25,
        good_needed: int = 5,
        expect_name: str | None = None,
        ok_stamp: Literal["answered", "sent"] = "answered",
        clock: Clock | None = None,
        name: str = "prober",
        edge_interval: float | None = 0.002,
        burst: float = 0.25,
        edge_in_flight: int = 2,
        edge_share: float = 0.25,
        edge_reserve: float = 40.0,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise HarnessError(f"prober interval and timeout must be > 0: {interval}, {timeout}")
        if edge_interval is not None and not 0 < edge_interval < interval:
            raise HarnessError(
                f"edge probe interval must be > 0 and below the interval {interval}: "
                f"{edge_interval}"
            )
        self._target = target
        self._on_transition = on_transition
        self.interval = interval
        self.timeout = timeout
        self.expect_name = expect_name
        self.clock: Clock = clock or RealClock()
        self.name = name
        self.machine = ProbeStateMachine(good_needed, ok_stamp)
        self.sent = 0
        self.failed = 0
        # Edge refinement (module doc); edge_interval None: the plain grid.
        self.edge_interval = edge_interval
        self.burst = burst
        self.edge_in_flight = edge_in_flight
        self.edge_share = edge_share
        self.edge_reserve = edge_reserve
        self.edge_sent = 0  # edge probes among ``sent``
        self.hints = 0
        self._tokens = edge_reserve
        self._hint_until = -math.inf  # loop time; hinted window, ends at a change
        self._burst_until = -math.inf  # loop time; burst after a change
        self._hint_pending: float | None = None  # window asked before the loop ran
        self._edge_live: dict[int, float] = {}  # seq -> loop time sent, edge probes in flight
        self._srtt: float | None = None  # smoothed answer time of good probes, s
        self._wake: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self._current: ProbeTarget | None = None
        self._target_error = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()
        # Send-order reassembly: outcomes wait here until all earlier ones are in.
        self._done: dict[int, ProbeOutcome] = {}
        self._next_feed = 0
        self._netns: str | None = None
        self._home_fd: int | None = None

    @property
    def state(self) -> ProbeState:
        return self.machine.state

    def expect_edge(self, window: float = 1.0) -> None:
        """Edge probes from now for ``window`` s, or until a change of outcome is seen.

        Called (from any thread) just before the harness acts on the workload:
        the dense probes are going when the edge comes. A no-op without edge
        refinement; the budget (module doc) still bounds what it costs.
        """
        if self.edge_interval is None:
            return
        self.hints += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            self._hint_pending = window
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(self._open_hint, window)

    def _open_hint(self, window: float) -> None:
        assert self._loop is not None
        self._hint_until = max(self._hint_until, self._loop.time() + window)
        self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def start(self) -> None:
        if self._thread is not None:
            raise HarnessError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise HarnessError(f"{self.name} could not start: {self.error}") from self.error

    def stop(self) -> None:
        """Stop sending, drop probes still in flight, join the thread.

        Raises ``HarnessError`` if the prober thread died of an error.
        """
        loop, main = self._loop, self._main
        if loop is not None and main is not None and not loop.is_closed():
            # The loop may close between the check and the call: nothing to stop then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_main)
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise HarnessError(f"{self.name} failed: {self.error!r}") from self.error

    # --- the prober thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            self._home_fd = current_netns_fd()
            asyncio.run(self._amain())
        except BaseException as exc:  # kept and re-raised by stop(), never lost
            self.error = self.error or exc
            log.exception("%s died", self.name)
        finally:
            self._started.set()
            if self._home_fd is not None:
                os.close(self._home_fd)

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        await self._refresh_target()
        refresher = asyncio.create_task(self._refresh_forever())
        in_flight: set[asyncio.Task[None]] = set()
        if self._hint_pending is not None:
            self._open_hint(self._hint_pending)
            self._hint_pending = None
        self._started.set()
        try:
            t0 = self._loop.time()
            k = 0
            last_send = -math.inf
            while True:
                now = self._loop.time()
                grid_at = t0 + k * self.interval
                edge_at = self._next_edge_probe(now, last_send, grid_at)
                at = grid_at if edge_at is None else min(grid_at, edge_at)
                if at > now:
                    await self._sleep_until(at)
                    continue  # a hint or a change may have moved the next send
                edge = edge_at is not None and edge_at < grid_at
                seq = self.sent
                self.sent += 1
                if edge:
                    self.edge_sent += 1
                    self._tokens -= 1
                    self._edge_live[seq] = self._loop.time()
                else:
                    self._tokens = min(self.edge_reserve, self._tokens + self.edge_share)
                task = asyncio.create_task(
                    self._probe(seq, self.clock.now(), self._current, edge=edge)
                )
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                last_send = self._loop.time()
                if edge:
                    continue
                k += 1
                # If the loop was stalled past whole slots, skip them rather than
                # firing a burst: the schedule stays a fixed grid.
                behind = (self._loop.time() - t0) / self.interval
                if behind > k + 1:
                    k = math.ceil(behind)
        except asyncio.CancelledError:
            pass
        finally:
            refresher.cancel()
            for t in in_flight:
                t.cancel()
            await asyncio.gather(refresher, *in_flight, return_exceptions=True)

    def _next_edge_probe(self, now: float, last_send: float, grid_at: float) -> float | None:
        """When the next edge probe is due, or None (no window open, or over budget)."""
        step = self.edge_interval
        if step is None or (self._current is not None and self._current.serial):
            return None
        hinted = now < self._hint_until
        # A burst spends only the upper half of the budget: a hint must find some.
        bursting = now < self._burst_until and self._tokens >= 1 + self.edge_reserve / 2
        if not (hinted or bursting) or self._tokens < 1:
            return None
        at = max(now, last_send + step)
        overdue = self._overdue(step)
        live = sorted(t for t in self._edge_live.values() if t > now - overdue)
        if len(live) >= self.edge_in_flight:
            at = max(at, live[0] + overdue)  # when the oldest is overdue
        # Close to the grid's next probe: that one places the edge as well.
        return None if at > grid_at - step / 2 else at

    def _overdue(self, step: float) -> float:
        """How long an edge probe in flight holds the cap (module doc)."""
        if self._srtt is None:
            return self.interval
        return min(self.interval, max(2 * step, 4 * self._srtt))

    def _learn_latency(self, o: ProbeOutcome) -> None:
        if o.ok and o.answered is not None:
            latency = max(0.0, o.answered - o.sent)
            # 1/8 of each new sample, as TCP's SRTT: one slow answer moves it little.
            self._srtt = latency if self._srtt is None else self._srtt + (latency - self._srtt) / 8

    async def _sleep_until(self, at: float) -> None:
        """Sleep until loop time ``at``, or until ``_wake_up`` (a hint, a change)."""
        assert self._loop is not None
        self._wake = self._loop.create_future()
        handle = self._loop.call_at(at, self._wake_up)
        try:
            await self._wake
        finally:
            handle.cancel()
            self._wake = None

    def _cancel_main(self) -> None:
        # Once only: a second cancel would land in the clean-up of the first.
        if self._main is not None and not self._main.done() and not self._main.cancelling():
            self._main.cancel()

    async def _refresh_target(self) -> None:
        try:
            self._current = await asyncio.to_thread(self._target)
            self._target_error = ""
        except Exception as exc:  # a failed lookup is a failed probe, with its reason
            self._current = None
            self._target_error = f"target lookup failed: {exc}"

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._refresh_target()

    def _enter(self, netns: str | None) -> None:
        if netns == self._netns:
            return
        if netns is None:
            assert self._home_fd is not None
            enter_netns_fd(self._home_fd, "of the harness")
        else:
            enter_netns(netns)
        self._netns = netns

    async def _probe(
        self, seq: int, sent: float, target: ProbeTarget | None, edge: bool = False
    ) -> None:
        try:
            outcome = await self._outcome(sent, target, edge)
        finally:
            if self._edge_live.pop(seq, None) is not None:
                self._wake_up()  # the cap may have held an edge probe back
        self._learn_latency(outcome)
        self._done[seq] = outcome
        self._drain()

    async def _outcome(self, sent: float, target: ProbeTarget | None, edge: bool) -> ProbeOutcome:
        if target is None:
            reason = self._target_error or "no endpoint"
            return ProbeOutcome(sent, False, reason=reason, edge=edge, done=self.clock.now())
        endpoint = f"{target.host}:{target.port}"
        try:
            self._enter(target.netns)
        except HarnessError as exc:
            return ProbeOutcome(
                sent, False, reason=str(exc), endpoint=endpoint, edge=edge, done=self.clock.now()
            )
        try:
            ok, instance, reason = await http_probe(target, self.timeout, self.expect_name)
        except HarnessError as exc:
            # A malformed target (a bad header): a failed probe naming
            # why, rather than a lost task that would stall the feed.
            ok, instance, reason = False, None, str(exc)
        done = self.clock.now()
        return ProbeOutcome(
            sent, ok, instance, done if ok else None, reason, endpoint, edge=edge, done=done
        )

    def _drain(self) -> None:
        while self._next_feed in self._done:
            o = self._done.pop(self._next_feed)
            self._next_feed += 1
            if not o.ok:
                self.failed += 1
            prev = self.machine.last
            if prev is not None and prev.ok != o.ok:
                self._changed(failed=not o.ok)
            for tr in self.machine.feed_outcome(o):
                try:
                    self._on_transition(tr)
                except Exception as exc:
                    # A transition that cannot be recorded makes the whole
                    # measurement worthless: stop, and let stop() raise it.
                    self.error = exc
                    self._cancel_main()
                    return

    def _changed(self, failed: bool) -> None:
        """A change of outcome was seen: the hinted window is over; after a failure
        a burst starts. None after a success: a workload that has just come back
        gets only the grid's load (a burst there made a busybox pod on a loaded
        host drop a SYN, a failure the prober caused)."""
        if self.edge_interval is None or self._loop is None:
            return
        self._hint_until = -math.inf
        if failed:
            self._burst_until = self._loop.time() + self.burst
        else:
            self._burst_until = -math.inf
        self._wake_up()
