"""Collectives among a job's tasks (see :mod:`dsdk._collective`)::

from dsdk import collective
g = collective.group()                     # every task of the job, found through the master
total = g.allreduce(grad)                  # ring inside a sub-domain, tree across sub-domains
params = g.broadcast(params if g.rank == 0 else None)
g.barrier()
"""

from dsdk._collective import Group, allreduce, barrier, broadcast, group

__all__ = ["Group", "allreduce", "barrier", "broadcast", "group"]
