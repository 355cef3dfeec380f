#!/usr/bin/env python3
"""RAG answer quality on the measured question set, with the model against without it.

The scenario of bench/rag_scenario.py (12 real shared captures, the attacks and some benign nDPI
traffic, shifted onto 2026-11-21 06:00-10:40 UTC) is imported into a fresh store in a
temp dir through the real detection path; the question set (24 questions with known
answers: counts, who, about an address, time windows, benign, "nothing"; and the 46
harder ones of issue 21: phrasings, misspellings, host names, blocks, disagreements,
follow-ups) is asked at 10:45, once without a model (the reply built from the SQL
facts, ``Answerer(cfg, "none")``) and once with the model (SmolLM2-135M-Instruct, or
``--model PATH``). Each answer is graded: expected facts in the reply (addresses, words, numbers
counted by the grader's own SQL) and citations (cited events relevant by ground truth);
a question scores the mean of the two, the set the mean over questions.

Prints each question with its score, what was missing, the citations and the time, and
the detector's share (``relevant_alerts=0``: the detector raised no alert on the
attack's events, so the alert filters cannot find it).

Last line: ``score_model=F score_no_model=F questions=N build_s=F events=N
answer_s_p50=F answer_s_max=F answer_s_p50_no_model=F model_replaced=N model=NAME``
(answer_s: parse + retrieval + answer per question; model_replaced: model replies that
the answerer's check replaced by the facts-only reply). Without llama-cpp-python or the
model file, ``score_model=nan`` and the reason is printed.

    .venv/bin/python bench/rag_quality.py                      # ~8 minutes (55 answers by SmolLM2)
    .venv/bin/python bench/rag_quality.py --model ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf
    .venv/bin/python bench/rag_quality.py --no-model-only -v   # replies printed in full
    .venv/bin/python bench/rag_quality.py --set harder         # the 46 questions of issue 21
    .venv/bin/python bench/rag_quality.py --quick              # smoke run: 4 questions
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.common import shared_data  # noqa: E402
from bench.rag_questions import (  # noqa: E402
    HARDER,
    QUESTIONS,
    QUICK,
    Graded,
    ask_all,
    set_score,
)
from bench.rag_scenario import Capture, build_scenario  # noqa: E402
from config import load_config  # noqa: E402
from rag.answer import Answerer  # noqa: E402


def _print(results: list[Graded], title: str, verbose: bool) -> None:
    print(f"\n== {title}: score {set_score(results):.3f} over {len(results)} questions")
    for n, g in enumerate(results, 1):
        flags = []
        if g.missing:
            flags.append("missing " + "; ".join(g.missing))
        if not g.citations_ok:
            flags.append(f"citations {g.relevant_cited}/{len(g.cited)} relevant")
        if not g.relevant_alerts and g.question.kind not in ("nothing", "benign"):
            flags.append("relevant_alerts=0 (detector miss)")
        status = "ok" if g.score == 1 else ", ".join(flags)
        if g.replaced:
            status += f" (model reply replaced by the facts-only one: {g.replaced})"
        print(
            f"{n:2d} {g.score:.1f} {g.seconds:6.2f}s [{g.question.kind}] "
            f"{g.question.text!r}: {status}"
        )
        if verbose or g.score < 1:
            reply = " ".join(g.reply.split())
            print(f"       reply: {reply if verbose else reply[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--no-model-only", action="store_true", help="skip the model run")
    parser.add_argument("--data", type=Path, default=shared_data(), help="shared data dir")
    parser.add_argument("--top-k", type=int, default=0, help="events per question (config)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 questions")
    parser.add_argument(
        "--set",
        choices=("all", "first", "harder"),
        default="all",
        help="the first 24 questions, the harder ones of issue 21, or both (default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every reply")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config()
    sets = {"all": QUESTIONS + HARDER, "first": QUESTIONS, "harder": HARDER}
    questions = QUICK if args.quick else sets[args.set]

    why_no_model = ""
    model: Answerer | None = None
    if args.no_model_only:
        why_no_model = "--no-model-only"
    elif importlib.util.find_spec("llama_cpp") is None:
        why_no_model = "llama-cpp-python is not installed (make install builds it)"
    else:
        model = Answerer(cfg.rag, args.model)
        if model.path is None:
            why_no_model, model = model.why_none, None

    with tempfile.TemporaryDirectory(prefix="mld-bench-rag-") as tmp:

        def progress(cap: Capture, n: int) -> None:
            print(f"  {cap.at} {cap.pcap}: {n} flows", flush=True)

        print(f"building the scenario from {args.data}/pcaps", flush=True)
        scenario = build_scenario(Path(tmp), args.data, cfg, progress=progress)
        events = scenario.sql("SELECT COUNT(*) FROM events")[0][0]
        print(f"built: {events} events in {scenario.build_s:.1f} s", flush=True)

        plain = ask_all(scenario, Answerer(cfg.rag, "none"), questions, top_k=args.top_k, cfg=cfg)
        _print(plain, "without a model", args.verbose)
        with_model: list[Graded] = []
        if model is not None:
            started = time.perf_counter()
            model._load()  # timed apart from the answers
            load_s = time.perf_counter() - started
            print(f"\nloaded {model.model_name} in {load_s:.1f} s", flush=True)
            with_model = ask_all(scenario, model, questions, top_k=args.top_k, cfg=cfg)
            _print(with_model, f"with {model.model_name}", args.verbose)
        else:
            print(f"\nno model run: {why_no_model}")

    def p50(rs: list[Graded]) -> float:
        return statistics.median(g.seconds for g in rs) if rs else float("nan")

    def part(rs: list[Graded], of: tuple[object, ...]) -> list[Graded]:
        return [g for g in rs if g.question in of]

    if args.set == "all" and not args.quick:
        for name, of in (("first", QUESTIONS), ("harder", HARDER)):
            print(
                f"{name}: score_model={set_score(part(with_model, of)):.3f} "
                f"score_no_model={set_score(part(plain, of)):.3f} questions={len(of)}"
            )

    print(  # the one key=value line
        f"score_model={set_score(with_model):.3f} score_no_model={set_score(plain):.3f} "
        f"questions={len(questions)} build_s={scenario.build_s:.2f} events={events} "
        f"answer_s_p50={p50(with_model):.3f} "
        f"answer_s_max={max((g.seconds for g in with_model), default=float('nan')):.3f} "
        f"answer_s_p50_no_model={p50(plain):.4f} "
        f"model_replaced={sum(1 for g in with_model if g.replaced) if with_model else 'nan'} "
        f"model={model.model_name if model else 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
