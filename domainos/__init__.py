"""DomainOS shared layer: wire protocol, store, domain types and plumbing used by every tier.

Server packages (``master_domain``, ``sub_domain``, ``node_agent``) and the ``dsdk`` all build on
this package and never import each other.
"""

__version__ = "0.1.0"
