"""swarm-gateway: an nginx gateway agent for Docker Swarm.

Importing this package imports nothing heavy: `agent.check` (run by keepalived every second)
depends on that.
"""

__version__ = "0.1.0"
