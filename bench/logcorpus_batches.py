#!/usr/bin/env python3
"""Held-out scores of the real-log corpus per collection batch, aggregates only (issue 21).

``bench_logcorpus.py`` scores the held-out part as one; a batch collected later (c4, c5) is the
measure of logs nobody tuned on, so each is scored alone here, twice:

* as audited: the manifests as committed. An excerpt that holds no line stating its error expects
  fmllm to say so (``log_cut_in_traceback`` / ``ranks_failed``), the thread's cause acceptable;
* thread causes: every such manifest expects its thread's cause instead (``thread_cause``), as a
  reader who only knows the thread would score it.

It never prints a per-log line for a held-out log, so running it does not expose one.

    python bench/logcorpus_batches.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_logcorpus as corpus_bench  # noqa: E402

Corpus = list[tuple[Path, dict[str, Any]]]


def thread_causes(corpus: Corpus, batch: str) -> Corpus:
    """``corpus`` with the batch's cut excerpts expecting their thread's cause."""
    out = []
    for path, man in corpus:
        if man.get("batch") == batch and man.get("thread_cause"):
            man = copy.deepcopy(man)
            man["expected_cause"] = man["thread_cause"]
            man["acceptable_causes"] = [c for c in man["acceptable_causes"] if c != man["thread_cause"]]
        out.append((path, man))
    return out


def line(tag: str, corpus: Corpus) -> str:
    sc = corpus_bench.score(corpus, "heldout")
    return f"{tag:38s} {sc.n:3d} logs: {sc.headline()}"


def main() -> int:
    corpus = corpus_bench.load_corpus()
    batches = sorted({str(m.get("batch")) for _p, m in corpus if m.get("split") == "heldout"})
    for batch in batches:
        # the fit part stays in: a held-out log with a fit log's text is not scored (bench_logcorpus.leaked)
        part = [(p, m) for p, m in corpus if m.get("split") == "fit" or str(m.get("batch")) == batch]
        print(line(f"held out, batch {batch}, as audited", part))
        print(line(f"held out, batch {batch}, thread causes", thread_causes(part, batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
