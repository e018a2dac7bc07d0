"""The scheduler's pure core: decisions with no I/O (quotas, placement, reservations, power, loss).

Each module is a pure function set or a state machine (``handle(event) -> list[command]``) with a
``validate()``; the master's service layer wires them to the wire and the store.
"""

from master_domain._sched._fairshare import (
    FairShareQueue,
    PendingJob,
    PriorityClass,
    PriorityClasses,
    capacity_from_summaries,
    dominant_share,
)
from master_domain._sched._loss import Link, LinkTable, LossEstimate, estimate_cross_loss
from master_domain._sched._power import Fits, Over, PowerBook, PowerModel, RegionPower, Split
from master_domain._sched._preempt import (
    NoPreemption,
    Preemption,
    PreemptionRequest,
    RequeueGang,
    RunningGang,
    StopGang,
    cheapest,
    free_of,
    plan_preemption,
)
from master_domain._sched._quota import (
    Admit,
    DefaultPolicy,
    Quota,
    QuotaBook,
    Wait,
    demand_of,
    demand_of_tasks,
)
from master_domain._sched._reserve import Coordinator, Demand, SubdomainReservations
from master_domain._sched._topology import (
    BlockView,
    GpuLimit,
    Placement,
    ShapeUse,
    SubDomainView,
    TrainingShape,
    Unplaceable,
    check_placement,
    plan_training,
)

__all__ = [
    "Admit",
    "BlockView",
    "Coordinator",
    "DefaultPolicy",
    "Demand",
    "FairShareQueue",
    "Fits",
    "GpuLimit",
    "Link",
    "LinkTable",
    "LossEstimate",
    "NoPreemption",
    "Over",
    "PendingJob",
    "Placement",
    "PowerBook",
    "PowerModel",
    "Preemption",
    "PreemptionRequest",
    "PriorityClass",
    "PriorityClasses",
    "Quota",
    "QuotaBook",
    "RegionPower",
    "RequeueGang",
    "RunningGang",
    "ShapeUse",
    "Split",
    "StopGang",
    "SubDomainView",
    "SubdomainReservations",
    "TrainingShape",
    "Unplaceable",
    "Wait",
    "capacity_from_summaries",
    "cheapest",
    "check_placement",
    "demand_of",
    "demand_of_tasks",
    "dominant_share",
    "estimate_cross_loss",
    "free_of",
    "plan_preemption",
    "plan_training",
]
