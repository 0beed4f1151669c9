"""Edge gateway agent for industrial condition monitoring.

The root package holds only what every layer may import: the shared record types
(:mod:`edge_agent.records`) and typed configuration on pydantic (:mod:`edge_agent.settings`).
Drivers, models and sync never import :mod:`edge_agent.agent`.
"""

__version__ = "0.1.0"
