"""Local evidence search: the corpus index the agent's search tool reads."""

from deepresearch.search.local_index import EvidenceIndex, IndexStats

__all__ = ["EvidenceIndex", "IndexStats"]
