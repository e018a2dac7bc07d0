"""DomainOS node agent: one per machine; runs tasks and reports to its sub-domain manager.

Run it with ``python -m node_agent --config agent.yaml`` or embed it::

    async with NodeAgent(AgentConfig(subdomains=["127.0.0.1:7100"])) as agent:
        await agent.registered.wait()
"""

from node_agent._agent import NodeAgent
from node_agent._config import AgentConfig

__all__ = ["AgentConfig", "NodeAgent"]
