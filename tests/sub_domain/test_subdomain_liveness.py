"""Liveness: heartbeats, probes of silent nodes, the reconnect grace, and the stall credit.

The registry tests drive :class:`NodeRegistry` with explicit times; the gRPC tests run a real
manager (fake clock) with a :class:`TestAgent` on a real stream that answers probes or not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from subdomain_helpers import TestAgent, async_test, await_for, inventory

from domainos.api.v1 import agent_pb2
from domainos.clock import FakeClock
from domainos.errors import ConfigError
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain._metrics import LAG_BUCKETS, LagHistogram
from sub_domain._registry import NodeDead, NodeReady, NodeRegistry, NodeSuspect

SILENT, PROBE, GRACE = 3.0, 1.0, 3.0


def reg() -> NodeRegistry:
    return NodeRegistry(
        "sd-1", max_nodes=100, silent_after_s=SILENT, dead_after_s=GRACE, probe_timeout_s=PROBE
    )


def test_only_the_silent_node_is_suspected_and_probed() -> None:
    r = reg()
    for i, node in enumerate(("quiet", "chatty", "gone")):
        r.register(inventory(node), "i", 0.0, conn_token=i + 1)
    r.report("chatty", 2.0, conn_token=2)  # a heartbeat
    assert r.disconnect("gone", 3, 2.5) == [NodeSuspect("gone", "its stream ended", probe=False)]
    events = r.tick(3.0)
    assert events == [NodeSuspect("quiet", "nothing heard for 3.0s, probed", probe=True)]
    assert r.get("chatty").state == "ready"  # type: ignore[union-attr]
    r.validate()


def test_an_answered_probe_revives_the_node_and_it_never_dies() -> None:
    r = reg()
    r.register(inventory("slow"), "i", 0.0, conn_token=1)
    assert [e.probe for e in r.tick(3.0) if isinstance(e, NodeSuspect)] == [True]
    assert r.report("slow", 3.6, conn_token=1) == [NodeReady("slow", "i", joined=False)]  # the answer
    r.validate()
    assert r.tick(4.0) == [] and r.tick(6.5) == []  # the probe deadline is stale
    assert r.get("slow").state == "ready"  # type: ignore[union-attr]
    # Silent again: a new suspicion, counted from the answer.
    assert r.tick(6.6) == [NodeSuspect("slow", "nothing heard for 3.0s, probed", probe=True)]


def test_an_unanswered_probe_is_death_after_the_probe_timeout() -> None:
    r = reg()
    r.register(inventory("hung"), "i", 0.0, conn_token=1)
    r.tick(3.0)
    assert r.tick(3.9) == []
    assert r.tick(4.0) == [NodeDead("hung", "nothing heard for 3.0s, probed, then nothing for 1.0s", True)]
    r.validate()


def test_an_answer_on_an_old_stream_does_not_count() -> None:
    r = reg()
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.disconnect("n1", 1, 0.5)
    r.register(inventory("n1"), "i", 1.0, conn_token=2)
    r.tick(4.0)  # silent on the new stream
    assert r.report("n1", 4.5, conn_token=1) == []  # the old stream's late answer
    assert [type(e) for e in r.tick(5.0)] == [NodeDead]


def test_a_dropped_stream_has_the_reconnect_grace() -> None:
    r = reg()
    r.register(inventory("back"), "i", 0.0, conn_token=1)
    r.register(inventory("lost"), "i", 0.0, conn_token=2)
    r.disconnect("back", 1, 1.0)
    r.disconnect("lost", 2, 1.0)
    assert r.tick(3.9) == []  # nobody is probed: there is no stream to probe on
    assert r.register(inventory("back"), "i", 3.5, conn_token=3) == [NodeReady("back", "i", joined=False)]
    events = r.tick(4.0)
    assert events == [NodeDead("lost", "its stream ended, then nothing for 3.0s", had_connection=False)]
    assert r.get("back").state == "ready"  # type: ignore[union-attr]
    r.validate()


def test_time_the_owner_was_stalled_does_not_count_against_nodes() -> None:
    r = reg()
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.register(inventory("n2"), "i", 0.0, conn_token=2)
    r.stalled(2.5, 2.0)  # the loop could not read from 0.5 to 2.5
    assert r.tick(3.0) == [] and r.tick(4.9) == []
    events = r.tick(5.0)
    assert sorted(e.node_id for e in events if isinstance(e, NodeSuspect)) == ["n1", "n2"]
    r.report("n2", 5.2, conn_token=2)
    r.stalled(5.8, 0.5)
    assert r.tick(6.0) == []  # n1's probe: 1 s less the 0.5 s stall
    assert [e.node_id for e in r.tick(6.5) if isinstance(e, NodeDead)] == ["n1"]
    r.validate()


def test_config_rejects_a_silence_limit_within_one_heartbeat() -> None:
    SubDomainConfig(id="a", region="r", insecure=True).validate()
    with pytest.raises(
        ConfigError, match=r"silent_after_s: must be greater than heartbeat_interval_s \(2.0\)"
    ):
        SubDomainConfig(id="a", region="r", insecure=True, silent_after_s=2.0).validate()
    with pytest.raises(ConfigError, match="probe_timeout_s: must be a positive number of seconds"):
        SubDomainConfig(id="a", region="r", insecure=True, probe_timeout_s=0.0).validate()


# -- a real manager and stream -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def manager(clock: FakeClock) -> AsyncIterator[SubDomainManager]:
    cfg = SubDomainConfig(id="sd-1", region="east", listen="127.0.0.1:0", metrics_listen="", insecure=True)
    mgr = SubDomainManager(cfg, clock=clock)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


async def _connected(mgr: SubDomainManager, node_id: str) -> TestAgent:
    a = TestAgent(mgr.listen_address, node_id)
    registered: Any = await a.connect()
    assert registered.heartbeat_interval_s == 2.0 and registered.full_sync_interval_s == 30.0
    return a


@async_test(30.0)
async def test_a_probed_node_that_answers_stays_ready_and_a_silent_one_dies() -> None:
    clock = FakeClock()
    async with manager(clock) as mgr:
        alive, silent = await _connected(mgr, "alive"), await _connected(mgr, "silent")
        try:
            await alive.report()  # a heartbeat (an empty delta) keeps a node ready
            await await_for(lambda: mgr.reports_received == 1)
            clock.advance(SILENT + 0.5)
            probe = await alive.next("probe")
            assert (await silent.next("probe")).nonce != probe.nonce
            await alive.send(probe_reply=agent_pb2.ProbeReply(nonce=probe.nonce))
            await await_for(lambda: mgr.node_state("alive") == "ready", what="the answer revives it")
            assert mgr.probes_sent == 2 and mgr.probes_answered == 1
            clock.advance(PROBE + 0.5)
            await await_for(lambda: mgr.node_state("silent") == "dead", what="the silent node dies")
            await asyncio.wait_for(silent.ended.wait(), 5)
            assert "declared dead" in (silent.error.details() if silent.error else "")
            assert mgr.node_state("alive") == "ready"
        finally:
            await alive.close()
            await silent.close()


def test_report_lag_histogram_counts_cumulatively_and_clamps_skew() -> None:
    h = LagHistogram()
    for lag in (0.0004, 0.003, 0.003, -2.0, 30.0):  # -2: an agent clock ahead of ours counts as 0
        h.observe(lag)
    buckets, total = h.snapshot()
    counts = dict(buckets)
    assert buckets[0] == ("0.001", 2.0) and counts["0.003"] == 4.0 and counts["10"] == 4.0
    assert buckets[-1] == ("+Inf", 5.0) and total == pytest.approx(30.0064)
    assert [float(le) for le, _ in buckets[:-1]] == list(LAG_BUCKETS)
