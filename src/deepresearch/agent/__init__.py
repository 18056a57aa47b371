"""The research engine: it yields typed events and knows nothing of HTTP."""

from deepresearch.agent.base import Agent
from deepresearch.agent.digest import EvidenceDigestAgent
from deepresearch.agent.react import ReactAgent

__all__ = ["Agent", "EvidenceDigestAgent", "ReactAgent"]
