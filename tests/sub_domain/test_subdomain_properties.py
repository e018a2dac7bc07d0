"""Property test: random register/place/finish/disconnect/tick/... sequences keep every invariant."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from subdomain_helpers import inventory, spec

from domainos.errors import AlreadyExists, ResourceExhausted
from domainos.model import TaskRef, TaskState, TaskStatus
from sub_domain._registry import NodeDead, NodeEvent, NodeReady, NodeRegistry
from sub_domain._tasks import Forward, StartOnAgent, TaskTable

NODES = [f"n{i}" for i in range(6)]
SHAPES: dict[str, dict[str, int]] = {
    f"n{i}": {"cpus": 4 + 4 * (i % 3), "memory_gi": 16, "gpus": (0, 2, 8)[i % 3]} for i in range(6)
}


class SubDomainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reg = NodeRegistry("sd-p", max_nodes=4, silent_after_s=15.0, dead_after_s=5.0)
        ids = itertools.count()
        self.table = TaskTable("sd-p", self.reg, new_id=lambda: f"c{next(ids)}")
        self.now = 0.0
        self.tokens = itertools.count(1)
        self.conn: dict[str, int] = {}
        self.jobs = itertools.count()

    def _dead(self, events: Sequence[NodeEvent]) -> None:
        for ev in events:
            if isinstance(ev, NodeDead):
                self.conn.pop(ev.node_id, None)
                self.table.node_dead(ev.node_id, ev.why, self.now)
            if isinstance(ev, NodeReady) and ev.evicted:
                self.table.reconcile(ev.node_id, [], self.now, evicted=ev.evicted)

    @rule(node=st.sampled_from(NODES), report_some=st.booleans(), bigger=st.booleans())
    def register(self, node: str, report_some: bool, bigger: bool) -> None:
        token = next(self.tokens)
        shape = SHAPES[node]
        cpus = shape["cpus"] if bigger else max(1, shape["cpus"] // 2)  # sometimes a node comes back smaller
        inv = inventory(node, cpus=cpus, memory_gi=shape["memory_gi"], gpus=shape["gpus"])
        try:
            events = self.reg.register(inv, f"i{token}", self.now, conn_token=token)
        except (ResourceExhausted, AlreadyExists):
            return
        self.conn[node] = token
        evicted = next((e.evicted for e in events if isinstance(e, NodeReady)), ())
        active = self.table.active_on(node)
        reported = [TaskStatus(k, TaskState.RUNNING) for k in (active[::2] if report_some else [])]
        self.table.reconcile(node, reported, self.now, evicted=evicted)

    @rule(node=st.sampled_from(NODES))
    def disconnect(self, node: str) -> None:
        token = self.conn.pop(node, None)
        if token is not None:
            self.reg.disconnect(node, token, self.now)

    @rule(node=st.sampled_from(NODES))
    def report(self, node: str) -> None:
        token = self.conn.get(node)
        if token is not None:
            self._dead(self.reg.report(node, self.now, conn_token=token))

    @rule(dt=st.floats(min_value=0.0, max_value=12.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._dead(self.reg.tick(self.now))

    @rule(cpus=st.sampled_from([0.5, 1, 2, 4, 9]), gpus=st.sampled_from([0, 0, 1, 2, 8]))
    def place(self, cpus: float, gpus: int) -> None:
        fx = self.table.place(spec(f"j{next(self.jobs)}", cpus=cpus, memory_gi=1, gpus=gpus), self.now)
        fwd = [e for e in fx if isinstance(e, Forward)]
        assert len(fwd) == 1
        if fwd[0].status.state == TaskState.ASSIGNED:
            start = next(e for e in fx if isinstance(e, StartOnAgent))
            assert len(start.gpu_indexes) == gpus

    @rule(data=st.data(), state=st.sampled_from([TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.FAILED]))
    def finish(self, data: st.DataObject, state: TaskState) -> None:
        keys = [k for n in NODES for k in self.table.active_on(n)]
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        node = self.table.node_of(key)
        assert node is not None
        self.table.agent_status(node, TaskStatus(key, state), self.now)

    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        keys = [*sorted(self.table._entries), TaskRef("ghost", 0, 0)]
        key = data.draw(st.sampled_from(keys))
        self.table.stop(key, grace_s=1.0, reason="test", now=self.now)

    @rule()
    def master_ack(self) -> None:
        terminal = [s.ref for s in self.table.hello_tasks() if s.state.terminal]
        self.table.master_ack(terminal)
        assert all(not s.state.terminal for s in self.table.hello_tasks())

    @invariant()
    def valid(self) -> None:
        self.table.validate()  # also validates the registry
        assert self.reg.live_count <= 4
        s = self.reg.summary()
        assert s.nodes_ready + s.nodes_suspect + s.nodes_dead == s.nodes_total
        assert sum(sh.count for sh in s.shapes) <= s.nodes_ready


TestSubDomainMachine = SubDomainMachine.TestCase
TestSubDomainMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
