"""The sub-domain manager: one per site, up to 10,000 nodes, between node agents and the master."""

from ._config import SubDomainConfig
from ._manager import SubDomainManager

__all__ = ["SubDomainConfig", "SubDomainManager"]
