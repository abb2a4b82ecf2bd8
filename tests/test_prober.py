"""The prober: its state machine on synthetic data, then the real thing over
loopback against a server made unavailable for a known window."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loopback_target import LoopbackTarget

from chaos.netns import enter_netns
from chaos.prober import (
    ProbeOutcome,
    Prober,
    ProbeState,
    ProbeStateMachine,
    Transition,
    _parse,
    http_probe,
)
from cluster.api import ProbeTarget
from core.errors import HarnessError, LabError
from core.timeline import EventKind

OK, FAIL = EventKind.PROBE_OK, EventKind.PROBE_FAIL


# --- state machine ----------------------------------------------------------------


def run(sm: ProbeStateMachine, seq: list[tuple[float, bool, str | None]]) -> list[Transition]:
    out: list[Transition] = []
    for t, ok, inst in seq:
        out += sm.feed(t, ok, inst, answered=t + 0.001 if ok else None, reason="x")
    return out


def test_first_failure_at_start_then_ok_stamped_at_first_of_n() -> None:
    sm = ProbeStateMachine(good_needed=3, ok_stamp="sent")
    trs = run(sm, [(0.0, False, None), (0.02, False, None), (0.04, True, "a"), (0.06, True, "a")])
    assert [(t.kind, t.at) for t in trs] == [(FAIL, 0.0)]
    assert sm.state is ProbeState.DOWN
    trs = run(sm, [(0.08, True, "a")])
    assert [(t.kind, t.at, t.data["instance"]) for t in trs] == [(OK, 0.04, "a")]
    assert sm.state is ProbeState.UP  # type: ignore[comparison-overlap]  # mutated by run()


def test_ok_stamp_answered_uses_answer_time_and_keeps_latency() -> None:
    sm = ProbeStateMachine(good_needed=2)
    trs = sm.feed(1.0, True, "a", answered=1.2) + sm.feed(1.02, True, "a", answered=1.2)
    assert trs[0].at == 1.2 and trs[0].data["latency_ms"] == "200.0"


def test_failure_inside_streak_restarts_the_count() -> None:
    sm = ProbeStateMachine(good_needed=3, ok_stamp="sent")
    trs = run(
        sm,
        [
            (0, False, None),
            (1, True, "a"),
            (2, True, "a"),
            (3, False, None),
            (4, True, "a"),
            (5, True, "a"),
            (6, True, "a"),
        ],
    )
    # One PROBE_FAIL only (already down at 3), OK stamped at 4 not 1.
    assert [(t.kind, t.at) for t in trs] == [(FAIL, 0), (OK, 4)]


def test_up_then_single_failure_is_an_outage() -> None:
    sm = ProbeStateMachine(good_needed=1, ok_stamp="sent")
    trs = run(sm, [(0, True, "a"), (1, True, "a"), (2, False, None), (3, True, "a")])
    assert [(t.kind, t.at) for t in trs] == [(OK, 0), (FAIL, 2), (OK, 3)]


def test_streak_of_two_instances_restarts_at_the_new_one() -> None:
    sm = ProbeStateMachine(good_needed=2, ok_stamp="sent")
    trs = run(sm, [(0, False, None), (1, True, "a"), (2, True, "b"), (3, True, "b")])
    assert [(t.kind, t.at) for t in trs][-1] == (OK, 2)
    assert trs[-1].data["instance"] == "b"


def test_silent_restart_while_up_is_marked() -> None:
    sm = ProbeStateMachine(good_needed=1, ok_stamp="sent")
    trs = run(sm, [(0, True, "a"), (1, True, "b")])
    assert trs[-1].kind is EventKind.MARK and trs[-1].data["instance"] == "b"


def test_bad_good_needed() -> None:
    with pytest.raises(Exception, match="good_needed"):
        ProbeStateMachine(good_needed=0)


@pytest.mark.parametrize(
    ("answer", "expect", "verdict"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nweb abc\n", None, (True, "abc", "")),
        (b"HTTP/1.1 200 OK\nX: y\n\nweb abc\n", "web", (True, "abc", "")),
        (b"HTTP/1.0 200 OK\r\n\r\nother abc\n", "web", (False, None, "wrong workload 'other'")),
        (b"HTTP/1.0 503 Unavailable\r\n\r\nweb abc", None, (False, None, "http 503")),
        (b"HTTP/1.0 200 OK\r\n\r\nweb", None, (False, None, "bad body")),
        (b"", None, (False, None, "closed without answer")),
    ],
)
def test_parse(answer: bytes, expect: str | None, verdict: tuple[bool, str | None, str]) -> None:
    assert _parse(answer, expect) == verdict


# --- the real prober over loopback ---------------------------------------------------


class Collect:
    """Transitions as they come, with events to wait on (no polling)."""

    def __init__(self) -> None:
        self.items: list[Transition] = []
        self.up = threading.Event()
        self.down = threading.Event()

    def __call__(self, tr: Transition) -> None:
        self.items.append(tr)
        if tr.kind is OK:
            self.down.clear()
            self.up.set()
        elif tr.kind is FAIL:
            self.up.clear()
            self.down.set()


@pytest.fixture
def server() -> Iterator[LoopbackTarget]:
    srv = LoopbackTarget(name="web", instance="i1").start()
    try:
        yield srv
    finally:
        srv.stop()


def started(target: Callable[[], ProbeTarget | None], **kw: object) -> tuple[Prober, Collect]:
    col = Collect()
    p = Prober(target, col, **kw)  # type: ignore[arg-type]
    p.start()
    return p, col


@pytest.mark.parametrize("mode", ["503", "refuse", "hang", "freeze"])
def test_measured_outage_matches_the_window(server: LoopbackTarget, mode: str) -> None:
    p, col = started(server.target, expect_name="web")
    try:
        assert col.up.wait(2), "prober never saw the server up"
        sent_before = p.sent
        down_at = server.set_mode(mode)
        time.sleep(0.6)
        up_at = server.set_mode("ok")
        sent_in_window = p.sent - sent_before
        col.up.clear()
        assert col.up.wait(2), f"never recovered after {mode}"
    finally:
        p.stop()
    fail = next(t for t in col.items if t.kind is FAIL)
    ok = col.items[-1]
    assert ok.kind is OK and ok.data["instance"] == "i1"
    measured = ok.at - fail.at
    assert abs(measured - (up_at - down_at)) < 0.15, (mode, measured, up_at - down_at)
    assert abs(fail.at - down_at) < 0.15
    # Fixed schedule: hung probes do not slow the sending down (~30 in 0.6 s).
    assert sent_in_window >= 20
    assert p.failed >= 10


def test_no_endpoint_and_lookup_errors_are_failed_probes(server: LoopbackTarget) -> None:
    state: dict[str, str | None] = {"t": None}  # None: no endpoint; "boom": lookup raises

    def target() -> ProbeTarget | None:
        if state["t"] == "boom":
            raise LabError("backend gone")
        return server.target() if state["t"] == "ok" else None

    p, col = started(target, good_needed=2)
    try:
        assert col.down.wait(2)
        state["t"] = "ok"
        assert col.up.wait(2)
        state["t"] = "boom"
        assert col.down.wait(2)
    finally:
        p.stop()
    reasons = [t.data["reason"] for t in col.items if t.kind is FAIL]
    assert reasons[0] == "no endpoint"
    assert "target lookup failed: backend gone" in reasons[-1]


def test_follows_a_moving_target(server: LoopbackTarget) -> None:
    other = LoopbackTarget(name="web", instance="i2").start()
    where = {"srv": server}
    try:
        p, col = started(lambda: where["srv"].target())
        try:
            assert col.up.wait(2)
            server.set_mode("refuse")
            assert col.down.wait(2)
            where["srv"] = other  # rescheduled: new address, new instance
            col.up.clear()
            assert col.up.wait(2)
        finally:
            p.stop()
    finally:
        other.stop()
    last = col.items[-1]
    assert last.kind is OK and last.data["instance"] == "i2"
    assert last.data["endpoint"] == f"127.0.0.1:{other.port}"


def test_wrong_workload_fails(server: LoopbackTarget) -> None:
    p, col = started(server.target, expect_name="db")
    try:
        assert col.down.wait(2)
    finally:
        p.stop()
    assert col.items[0].data["reason"] == "wrong workload 'web'"
    assert not col.up.is_set()


def test_stop_is_prompt_even_with_hung_probes(server: LoopbackTarget) -> None:
    p, _ = started(server.target, timeout=5.0)
    server.set_mode("hang")
    time.sleep(0.1)
    t = time.monotonic()
    p.stop()
    assert time.monotonic() - t < 1.0


# --- network namespaces (root) ------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    name = f"rto-test-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.lab
def test_prober_enters_the_target_netns(netns: str) -> None:
    # A server bound to 127.0.0.1 inside the namespace: only reachable from there.
    ready = threading.Event()
    box: dict[str, LoopbackTarget] = {}

    def serve_in_ns() -> None:
        enter_netns(netns)
        box["srv"] = LoopbackTarget(instance="ns1").start()
        ready.set()

    th = threading.Thread(target=serve_in_ns)
    th.start()
    th.join()
    assert ready.is_set()
    srv = box["srv"]
    try:
        inside = ProbeTarget("127.0.0.1", srv.port, netns=netns)
        p, col = started(lambda: inside)
        try:
            assert col.up.wait(2)
        finally:
            p.stop()
        assert col.items[-1].data["instance"] == "ns1"
        # The same address from the harness's own namespace is not that server.
        outside = ProbeTarget("127.0.0.1", srv.port)
        p, col = started(lambda: outside)
        try:
            assert col.down.wait(2)
        finally:
            p.stop()
    finally:
        srv.stop()


def test_enter_missing_netns_is_a_clear_error() -> None:
    err: list[BaseException] = []

    def go() -> None:
        try:
            enter_netns("rto-does-not-exist")
        except LabError as exc:
            err.append(exc)

    th = threading.Thread(target=go)
    th.start()
    th.join()
    assert err and "is the lab up" in str(err[0])


def test_a_transition_that_cannot_be_recorded_stops_the_prober(server: LoopbackTarget) -> None:
    seen = threading.Event()

    def broken(tr: Transition) -> None:
        seen.set()
        raise RuntimeError("timeline full")

    p = Prober(server.target, broken)
    p.start()
    assert seen.wait(2)
    with pytest.raises(HarnessError, match="timeline full"):
        p.stop()


def test_transitions_stay_in_time_order_when_a_flap_follows_a_late_answer() -> None:
    # After a thaw: five probes held in the freeze are answered at 1.0; the next
    # probe, sent at 0.9, is answered too late. Its failure must not be stamped
    # before the recovery it follows.
    sm = ProbeStateMachine(good_needed=5)
    trs = sm.feed(0.0, False)
    for s in (0.76, 0.78, 0.8, 0.82, 0.84):
        trs += sm.feed(s, True, "a", answered=1.0)
    trs += sm.feed(0.9, False, reason="timeout")
    trs += sm.feed(1.2, True, "a", answered=1.21)
    assert [t.kind for t in trs] == [FAIL, OK, FAIL]
    assert [t.at for t in trs] == sorted(t.at for t in trs)
    assert trs[2].at > trs[1].at == 1.0


# --- HTTPS and headers (the API server's service proxy path) ---------------------------


class TlsTarget:
    """A loopback HTTPS server answering like a workload, keeping every request head.

    Stands in for the API server's service proxy: the prober must speak TLS to
    it, check its certificate and send the bearer token.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.heads: list[str] = []
        self.handshake_errors = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                self.heads.append(data.decode("latin-1"))
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nweb tls1\n")
        except ssl.SSLError:
            self.handshake_errors += 1
        except OSError:
            return
        finally:
            raw.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (openssl CLI: no extra package)."""
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[TlsTarget]:
    srv = TlsTarget(*cert)
    try:
        yield srv
    finally:
        srv.stop()


def _probe(target: ProbeTarget) -> tuple[bool, str | None, str]:
    return asyncio.run(http_probe(target, 2.0, expect_name="web"))


def test_tls_probe_checks_the_certificate_and_sends_the_headers(
    tls_server: TlsTarget, cert: tuple[Path, Path]
) -> None:
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    target = ProbeTarget(
        "127.0.0.1",
        tls_server.port,
        path="/api/v1/namespaces/rto/services/web:8080/proxy/healthz",
        tls=trusting,
        server_hostname="localhost",
        headers=(("Authorization", "Bearer s3cret"),),
    )
    assert _probe(target) == (True, "tls1", "")
    head = tls_server.heads[-1].split("\r\n")
    assert head[0] == "GET /api/v1/namespaces/rto/services/web:8080/proxy/healthz HTTP/1.0"
    assert "Host: localhost" in head and "Authorization: Bearer s3cret" in head
    assert "s3cret" not in repr(target)  # the token stays out of logs

    # A server the context does not trust: a failed probe naming the certificate.
    untrusting = ssl.create_default_context()
    ok, _, reason = _probe(ProbeTarget("127.0.0.1", tls_server.port, tls=untrusting))
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in reason
    # Trusted, but checked against a name the certificate does not carry.
    ok, _, reason = _probe(
        ProbeTarget("127.0.0.1", tls_server.port, tls=trusting, server_hostname="api.example")
    )
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in reason and "api.example" in reason
    # Plain HTTP to a TLS port gets no HTTP answer.
    ok, _, reason = _probe(ProbeTarget("127.0.0.1", tls_server.port))
    assert not ok and reason in ("closed without answer", "bad answer", "reset")
    assert tls_server.handshake_errors >= 2  # the server refused those handshakes too


def test_prober_over_tls_goes_up_and_a_bad_header_is_a_failed_probe(
    tls_server: TlsTarget, cert: tuple[Path, Path]
) -> None:
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    good = ProbeTarget("127.0.0.1", tls_server.port, tls=ctx, server_hostname="localhost")
    bad = ProbeTarget(
        "127.0.0.1", tls_server.port, tls=ctx, headers=(("Authorization", "Bearer x\r\nX: y"),)
    )
    with pytest.raises(HarnessError, match="malformed"):
        _probe(bad)
    which = {"t": good}
    p, col = started(lambda: which["t"], expect_name="web", good_needed=3)
    try:
        assert col.up.wait(3), "never up over TLS"
        which["t"] = bad
        assert col.down.wait(3)
    finally:
        p.stop()
    assert col.items[0].kind is OK and col.items[0].data["instance"] == "tls1"
    assert "malformed" in col.items[-1].data["reason"]


# --- edge refinement -------------------------------------------------------------


def outcome(sent: float, ok: bool, *, edge: bool = False, **kw: object) -> ProbeOutcome:
    latency = 0.001
    answered = sent + latency if ok else None
    done = kw.pop("done", sent + latency)
    return ProbeOutcome(sent, ok, "a" if ok else None, answered, edge=edge, done=done, **kw)  # type: ignore[arg-type]


def test_failure_bracket_runs_from_the_last_good_send_to_the_failed_send() -> None:
    sm = ProbeStateMachine(good_needed=1)
    sm.feed_outcome(outcome(0.0, True))
    (fail,) = sm.feed_outcome(outcome(0.02, False, reason="refused"))
    # Served when asking at 0.0, not when asking at 0.02.
    assert fail.kind is FAIL and fail.data["bracket_ms"] == "20.00"


def test_recovery_bracket_runs_from_the_last_failed_send_to_the_stamp() -> None:
    sm = ProbeStateMachine(good_needed=2)
    for o in (outcome(0.0, True), outcome(0.02, True), outcome(0.04, False, reason="refused")):
        sm.feed_outcome(o)
    trs = sm.feed_outcome(outcome(0.06, True)) + sm.feed_outcome(outcome(0.08, True))
    assert [t.kind for t in trs] == [OK]
    # Down at 0.04 (the refused send), up by 0.061 (the first good answer).
    assert trs[0].at == pytest.approx(0.061) and trs[0].data["bracket_ms"] == "21.00"


def test_a_timeout_before_the_good_answer_narrows_the_recovery_bracket() -> None:
    # A frozen server: the probe sent at 0.30 timed out at 0.55, the one sent at
    # 0.32 was held and answered at the thaw (0.56). Nothing answered until 0.55.
    sm = ProbeStateMachine(good_needed=1)
    sm.feed_outcome(outcome(0.0, True))
    sm.feed_outcome(outcome(0.30, False, reason="timeout", done=0.55))
    (ok,) = sm.feed_outcome(ProbeOutcome(0.32, True, "a", 0.56, done=0.56))
    assert ok.at == 0.56 and ok.data["bracket_ms"] == "10.00"
    # A timeout that ended after the good answer proves nothing about it.
    sm = ProbeStateMachine(good_needed=1)
    sm.feed_outcome(outcome(0.0, True))
    sm.feed_outcome(outcome(0.30, False, reason="timeout", done=0.55))
    (ok,) = sm.feed_outcome(outcome(0.302, True))
    assert ok.data["bracket_ms"] == "3.00"


def test_edge_probes_start_a_streak_but_do_not_lengthen_it() -> None:
    sm = ProbeStateMachine(good_needed=3, ok_stamp="sent")
    sm.feed_outcome(outcome(0.0, False, reason="refused"))
    trs: list[Transition] = []
    # An edge probe first, then edge probes between grid probes.
    for t, edge in [(0.002, True), (0.004, True), (0.006, True), (0.02, False), (0.022, True)]:
        trs += sm.feed_outcome(outcome(t, True, edge=edge))
    assert trs == []  # the first edge probe and one grid probe: a streak of 2
    (ok,) = sm.feed_outcome(outcome(0.04, True))
    assert ok.at == 0.002 and ok.data["bracket_ms"] == "2.00"


def test_recovery_is_stamped_at_the_earliest_answer_of_the_streak() -> None:
    # The first good probe's SYN met a TIME_WAIT socket and was retried 8 ms
    # later; an edge probe sent after it was answered first. The workload was
    # serving by then: that answer is the recovery (and its latency is given).
    sm = ProbeStateMachine(good_needed=2)
    sm.feed_outcome(outcome(0.0, False, reason="refused"))
    late = ProbeOutcome(0.002, True, "a", answered=0.0105, edge=True, done=0.0105)
    early = ProbeOutcome(0.004, True, "a", answered=0.0045, edge=True, done=0.0045)
    assert sm.feed_outcome(late) + sm.feed_outcome(early) == []
    (ok,) = sm.feed_outcome(outcome(0.02, True))
    assert ok.at == 0.0045 and ok.data["latency_ms"] == "0.5"
    assert ok.data["bracket_ms"] == "4.50"


def test_an_earlier_answer_of_another_instance_does_not_stamp_the_recovery() -> None:
    sm = ProbeStateMachine(good_needed=2)
    sm.feed_outcome(outcome(0.0, False, reason="refused"))
    sm.feed_outcome(ProbeOutcome(0.002, True, "old", answered=0.003, done=0.003))
    sm.feed_outcome(ProbeOutcome(0.004, True, "new", answered=0.005, done=0.005))
    (ok,) = sm.feed_outcome(ProbeOutcome(0.024, True, "new", answered=0.025, done=0.025))
    assert ok.at == 0.005 and ok.data["instance"] == "new"


def test_no_bracket_without_the_other_side() -> None:
    sm = ProbeStateMachine(good_needed=1)
    (fail,) = sm.feed_outcome(outcome(0.0, False, reason="refused"))
    assert "bracket_ms" not in fail.data  # the very first probe failed
    sm = ProbeStateMachine(good_needed=1)
    (ok,) = sm.feed_outcome(outcome(0.0, True))
    assert "bracket_ms" not in ok.data  # up from the start: no outage to end


def test_edge_interval_must_be_below_the_interval() -> None:
    for bad in (0.0, 0.02, 0.05):
        with pytest.raises(HarnessError, match="edge probe interval"):
            Prober(lambda: None, lambda tr: None, interval=0.02, edge_interval=bad)


SLACK = 0.012


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_a_hint_places_both_edges_to_a_few_ms(server: LoopbackTarget, mode: str) -> None:
    """Against the server's own switch times: every bracket holds the truth, and
    they are far narrower than the 20 ms grid (in the best of three outages:
    generous, a loaded 2-core host may stall the prober's thread once)."""
    p, col = started(server.target, expect_name="web")
    widths: list[tuple[float, float]] = []
    try:
        assert col.up.wait(2)
        for _ in range(3):
            mark = len(col.items)
            p.expect_edge(1.0)
            time.sleep(0.01)
            down_at = server.set_mode(mode)
            time.sleep(0.3)
            p.expect_edge(1.0)
            time.sleep(0.01)
            col.up.clear()
            up_at = server.set_mode("ok")
            assert col.up.wait(2)
            fail = next(t for t in col.items[mark:] if t.kind is FAIL)
            ok = col.items[-1]
            start_w = float(fail.data["bracket_ms"]) / 1000
            end_w = float(ok.data["bracket_ms"]) / 1000
            # The truth lies inside each bracket, give or take the in-process
            # server's own lag (it shares this process's GIL: up to ~10 ms when
            # the host is loaded, a probe sent just before the switch is served after).
            assert fail.at - start_w - SLACK <= down_at <= fail.at + SLACK
            assert ok.at - end_w - SLACK <= up_at <= ok.at + SLACK
            widths.append((start_w, end_w))
            time.sleep(0.2)
    finally:
        p.stop()
    assert min(max(w) for w in widths) < 0.012, widths
    assert p.hints == 6 and p.edge_sent > 0


def test_edge_probes_stay_within_their_budget(server: LoopbackTarget) -> None:
    # A hint with no edge: the window runs out, spending at most the reserve
    # plus the share earned by the grid probes meanwhile.
    p, col = started(server.target, expect_name="web", edge_reserve=40.0, edge_share=0.25)
    try:
        assert col.up.wait(2)
        grid_before = p.sent - p.edge_sent
        p.expect_edge(1.0)
        time.sleep(1.1)
        grid = p.sent - p.edge_sent - grid_before
    finally:
        p.stop()
    assert 0 < p.edge_sent <= 40 + 0.25 * grid + 1
    assert [t.kind for t in col.items] == [OK]  # the edge probes changed nothing


def test_no_edge_probes_when_switched_off(server: LoopbackTarget) -> None:
    p, col = started(server.target, expect_name="web", edge_interval=None)
    try:
        assert col.up.wait(2)
        p.expect_edge(1.0)
        server.set_mode("refuse")
        assert col.down.wait(2)
        server.set_mode("ok")
        col.up.clear()
        assert col.up.wait(2)
    finally:
        p.stop()
    assert p.edge_sent == 0 and p.hints == 0


def test_a_hung_workload_gets_edge_probes_at_the_pace_of_its_answers(
    server: LoopbackTarget,
) -> None:
    # One edge probe in flight at a time, held back until the live one is
    # overdue: four loopback answer times, but at least two edge intervals (4 ms).
    # The budget is out of the way: the cap alone is tested.
    p, col = started(
        server.target, expect_name="web", timeout=0.25, edge_in_flight=1, edge_reserve=1000.0
    )
    try:
        assert col.up.wait(2)
        p.expect_edge(1.0)
        time.sleep(0.01)
        server.set_mode("hang")
        edge_before_hang = p.edge_sent
        time.sleep(0.2)  # before any hung probe times out
        edge_during_hang = p.edge_sent - edge_before_hang
        assert col.down.wait(2)
        server.set_mode("ok")
    finally:
        p.stop()
    # Without the cap: ~100 edge probes in 0.2 s (one per 2 ms). With it: one
    # per 4 ms at most, and still some (the hang's end must be probed too).
    assert 4 <= edge_during_hang <= 0.2 / 0.004 + 2


def test_an_edge_probe_is_overdue_after_a_few_of_the_workloads_answer_times() -> None:
    p = Prober(lambda: None, lambda tr: None, interval=0.02, edge_interval=0.002)
    assert p._overdue(0.002) == 0.02  # no answer yet: one interval
    for _ in range(50):
        p._learn_latency(ProbeOutcome(0.0, True, "a", answered=0.003))
    assert p._overdue(0.002) == pytest.approx(0.012)  # 4 x 3 ms
    p._learn_latency(ProbeOutcome(0.0, True, "a", answered=0.5))  # one slow answer
    assert p._overdue(0.002) == 0.02  # within one interval
    for _ in range(100):
        p._learn_latency(ProbeOutcome(0.0, True, "a", answered=0.0001))
    assert p._overdue(0.002) == 0.004  # at least two edge intervals
    p._learn_latency(ProbeOutcome(0.0, False, reason="refused", done=0.3))
    assert p._overdue(0.002) == 0.004  # a refusal says nothing of answer times


class OneAtATime:
    """Serves one connection at a time and is not listening in between, as the lab
    guests' ``while true; do ... | nc -l -p 8080; done`` loop: a connect that
    comes while it answers is refused."""

    def __init__(self, service_s: float = 0.006) -> None:
        self.service_s = service_s
        self.port = _free_port()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def target(self) -> ProbeTarget:
        return ProbeTarget(host="127.0.0.1", port=self.port, path="/healthz")

    def _serve(self) -> None:
        while not self.stopped.is_set():
            with socket.socket() as ls:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind(("127.0.0.1", self.port))
                ls.listen(0)
                ls.settimeout(0.1)
                try:
                    conn, _ = ls.accept()
                except TimeoutError:
                    continue
            # The listener is closed while this one is served.
            with conn:
                conn.recv(4096)
                time.sleep(self.service_s)
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nweb i1\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_serial_target_gets_no_edge_probes() -> None:
    srv = OneAtATime()
    target = dataclasses.replace(srv.target(), serial=True)
    p, col = started(lambda: target, expect_name="web")
    try:
        assert col.up.wait(3)
        failed = p.failed
        p.expect_edge(0.5)
        time.sleep(0.6)
    finally:
        p.stop()
        srv.stopped.set()
    # Overlapping probes would have been refused: failures the prober made. (A
    # grid probe may still meet the gap between two answers on a loaded host.)
    assert p.edge_sent == 0
    assert p.failed - failed <= 2


def test_overlapping_probes_are_refused_by_a_one_at_a_time_server() -> None:
    """Why ``serial`` exists: the same server, not marked, fails edge probes."""
    srv = OneAtATime()
    p, col = started(srv.target, expect_name="web")
    try:
        assert col.up.wait(3)
        failed = p.failed
        p.expect_edge(0.5)
        time.sleep(0.6)
    finally:
        p.stop()
        srv.stopped.set()
    assert p.edge_sent > 0 and p.failed > failed
