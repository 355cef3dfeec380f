"""The RAG store and console: every scored event searchable, questions answered in plain
language by a local model. See rag/README.md."""

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "rag.answer": (
            "Answer",
            "Answerer",
            "default_model_path",
        ),
        "rag.config": ("RagConfig",),
        "rag.console": (
            "Console",
            "Reply",
        ),
        "rag.indexed_store": ("RagStore",),
        "rag.question": (
            "Parsed",
            "parse",
        ),
        "rag.retrieve": (
            "Facts",
            "Retrieval",
            "retrieve",
        ),
        "rag.service": ("RagService",),
        "rag.store": (
            "EventRow",
            "EventStore",
            "Filters",
        ),
    },
)
