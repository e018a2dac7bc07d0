"""The master domain: the cross-region scheduler of a DomainOS federation.

It accepts jobs from clients (``DomainControl``), places their tasks on sub-domains from their
shape-aware summaries (``SubDomainGateway``), tracks every task to the end and retries by policy.
Run it with ``python -m master_domain --config master.yaml``.
"""

from master_domain._config import MasterConfig
from master_domain._master import MasterDomain

__all__ = ["MasterConfig", "MasterDomain"]
