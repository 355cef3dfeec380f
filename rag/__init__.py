"""The RAG store and console: every scored event searchable, questions answered in plain
language by a local model. See rag/README.md."""

from rag.answer import Answer, Answerer, default_model_path
from rag.config import RagConfig
from rag.console import Console, Reply
from rag.indexed_store import RagStore
from rag.question import Parsed, parse
from rag.retrieve import Facts, Retrieval, retrieve
from rag.service import RagService
from rag.store import EventRow, EventStore, Filters

__all__ = [
    "Answer",
    "Answerer",
    "Console",
    "EventRow",
    "EventStore",
    "Facts",
    "Filters",
    "Parsed",
    "RagConfig",
    "RagService",
    "RagStore",
    "Reply",
    "Retrieval",
    "default_model_path",
    "parse",
    "retrieve",
]
