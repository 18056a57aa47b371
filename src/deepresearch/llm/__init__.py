"""LLM backends: one narrow ``ChatModel`` interface and its implementations."""

from deepresearch.llm.base import BackendState, ChatModel, Message
from deepresearch.llm.openai import OpenAICompatibleModel
from deepresearch.llm.retry import RetryingModel

__all__ = ["BackendState", "ChatModel", "Message", "OpenAICompatibleModel", "RetryingModel"]
