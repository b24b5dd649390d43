"""Many connections closing at once, end to end: `offloadgen run` on softswitch and BMv2, hosts in namespaces.

Host A opens 1,000 TCP connections to B through the masquerade; once all are offloaded to the switch, A
shuts every one of them down at once (1,000 FINs, answered by 1,000 from B), and that is repeated
(``OFFLOADGEN_STRESS_ROUNDS``, default 2). The controller then handles a burst of FINs in its packet-in
thread (conntrack events that make flows closing) while its offload worker deletes the entries of the flows
closed just before (final counter reads that reach conntrack's accounting) -- where a lock-order deadlock
used to stop packet-ins and hang the status socket. A watchdog thread asks the status socket for `stats` all along and fails the test if
an answer does not come within 2 s. Afterwards the switch holds no entry and the flowtable no flow (closing
flows leave after the close timeout; conntrack keeps its TIME_WAIT entries, as the kernel does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostapps import MANY_CLIENT, MANY_SERVER, read_line, start_server, stop, wait_for
from test_flowtable_integration import B_ADDR, CLOSE_TIMEOUT, Lab, make_config, run_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
CONNECTIONS = 1000
#: Rounds of open-offload-close; OFFLOADGEN_STRESS_ROUNDS=10 for a longer soak.
ROUNDS = int(os.environ.get("OFFLOADGEN_STRESS_ROUNDS", "2"))
PORT = 5010
TCP_TIMEOUT = 900
#: The longest the status socket may take to answer before the controller counts as hung.
ANSWER_S = 2.0


class Watchdog:
    """Polls the controller's status socket from its own thread; remembers every query that failed or
    took longer than :data:`ANSWER_S`, and the slowest answer."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.failures: list[str] = []
        self.slowest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def _run(self) -> None:
        from runtime.status import StatusError, query

        while not self._stop.wait(0.2):
            t0 = time.monotonic()
            try:
                query("stats", self.sock, timeout=ANSWER_S)
            except (StatusError, OSError) as exc:
                self.failures.append(f"stats query failed after {time.monotonic() - t0:.1f} s: {exc}")
                continue
            took = time.monotonic() - t0
            self.answers += 1
            self.slowest = max(self.slowest, took)
            if took > ANSWER_S:
                self.failures.append(f"stats answered after {took:.1f} s")

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(ANSWER_S * 2)


@pytest.fixture(params=KINDS)
def lab(request: pytest.FixtureRequest, build_dir: Path, router_config_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp(f"stress-{request.param}")
    config = make_config(router_config_path, tmp)
    # The connections idle between opening and closing: a TCP timeout longer than the test keeps them from
    # expiring, and the periodic counter reads (from 10 % into the timeout) out of the picture.
    text = config.read_text()
    assert "\ntcp_timeout = 30\n" in text
    config.write_text(text.replace("\ntcp_timeout = 30\n", f"\ntcp_timeout = {TCP_TIMEOUT}\n"))
    with run_lab(request.param, build_dir, config, tmp) as lab:
        yield lab


def flowtable(lab: Lab) -> dict[str, Any]:
    return dict(lab.ctl.stats()["flowtable"])


def drained(ft: dict[str, Any]) -> bool:
    """No flow left, and no entry the controller believes is on the switch."""
    return ft["flows"] == 0 and not any(n for n, _ in ft["occupancy"].values())


def settle(lab: Lab, cond: Callable[[], Any], timeout: float, what: str) -> None:
    """wait_for, saying on failure where the flows are (counters and flows by state and flags)."""
    try:
        wait_for(cond, timeout, what)
    except AssertionError as exc:
        states: dict[str, int] = {}
        for f in lab.ctl.flows():
            key = f"{f['state']} {'|'.join(f['flags'])} {f['last_error']}"
            states[key] = states.get(key, 0) + 1
        raise AssertionError(f"{exc}: {flowtable(lab)}; flows by state: {states}") from None


def rounds(lab: Lab, client: subprocess.Popen[str], figures: list[str]) -> None:
    """Open, offload, close all at once and drain, ROUNDS times; timings go to ``figures``."""
    for rnd in range(ROUNDS):
        t0 = time.monotonic()
        if rnd:
            client.send_signal(signal.SIGUSR1)  # the next round (the first opens at once)
        opened = read_line(client, 150, f"round {rnd}: {CONNECTIONS} connections to open")
        assert opened.split() == ["open", str(CONNECTIONS)], opened
        settle(lab, lambda: flowtable(lab)["hw_offloaded"] == CONNECTIONS, 60,
               f"round {rnd}: all {CONNECTIONS} flows on the switch")
        t_open = time.monotonic() - t0
        assert len(lab.ctl.entries()) == 2 * CONNECTIONS, "both directions of every connection on the switch"

        t0 = time.monotonic()
        client.send_signal(signal.SIGUSR1)  # every connection shut down at once
        closed = read_line(client, 90, f"round {rnd}: {CONNECTIONS} connections to close")
        assert closed.split() == ["closed", str(CONNECTIONS)], closed
        settle(lab, lambda: drained(flowtable(lab)), CLOSE_TIMEOUT + 60,
               f"round {rnd}: the flowtable to empty after the close timeout")
        t_close = time.monotonic() - t0
        assert lab.ctl.entries() == [], "no entry left on the switch"
        figures.append(f"round {rnd}: open+offload {t_open:.1f} s, close+drain {t_close:.1f} s")
        lab.ctl.alive()


def test_thousand_connections_closing_at_once_repeatedly(lab: Lab) -> None:
    srv = start_server(lab.b, MANY_SERVER, "0.0.0.0", str(PORT))
    client = lab.a.popen(sys.executable, "-c", MANY_CLIENT, B_ADDR, str(PORT), str(CONNECTIONS),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    figures: list[str] = []
    try:
        with Watchdog(lab.ctl.sock) as dog:
            try:
                rounds(lab, client, figures)
            except AssertionError as exc:
                if dog.failures:  # the controller hung: that is the finding, the rest follows from it
                    raise AssertionError(f"the status socket stopped answering: {dog.failures[:3]}") from exc
                raise
        assert not dog.failures, dog.failures
        assert dog.answers > 0
        figures.append(f"status socket: {dog.answers} answers, slowest {dog.slowest:.2f} s")
        stats = lab.ctl.stats()
        assert stats["flowtable"]["counters"]["hw_del_ok"] >= CONNECTIONS * ROUNDS
        assert stats["controller"]["queue_dropped"] == 0
        print(f"[{lab.kind}] " + "; ".join(figures))
    finally:
        client.kill()
        client.wait()
        stop(srv)

    # A controller that is not stuck honours SIGTERM (a deadlocked one ignored it).
    proc = lab.ctl.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError("the controller ignored SIGTERM") from None
