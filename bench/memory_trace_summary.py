#!/usr/bin/env python3
"""Summarise a torch allocator history (``memory_snapshot.pickle`` written by the runner's
``memory_snapshot`` override): every allocation of at least ``--min-gib`` with its stream and the
Python frames that made it, every time a stream's reserved memory grew by 0.25 GiB or more, each
stream's reserved/allocated when the reserve seen in the trace peaked, and the reserve growth summed
by stream and by the Python frames that asked for it (small expandable-segment maps included).

    python3 bench/memory_trace_summary.py RUN_DIR/memory_snapshot.pickle --min-gib 0.5

Reads the pickle with the standard library only (no GPU, no torch needed). Unpickling runs code:
read only snapshots your own runs wrote. Exit codes: 0 summarised, 2 the file is missing or not an
allocator history.
"""

from __future__ import annotations

import argparse
import pickle
import sys

GiB = 1024**3


def frames_text(frames: list[dict], keep: int) -> str:
    """The innermost ``keep`` frames outside torch's own allocator plumbing, innermost first."""
    out = []
    for f in frames:
        name, file = f.get("name", "?"), f.get("filename", "?")
        if "CUDACachingAllocator" in file or file.startswith("??"):
            continue
        short = "/".join(file.split("/")[-3:])
        out.append(f"{short}:{f.get('line')} {name}")
        if len(out) >= keep:
            break
    return "\n      ".join(out)


def _count(text: str) -> int:
    """A whole number of at least 1 (argparse names the flag when it is not)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is below 1")
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pickle")
    ap.add_argument("--min-gib", type=float, default=0.5)
    ap.add_argument("--frames", type=_count, default=14)
    ap.add_argument("--by-frames", type=_count, default=6, help="frames that key the reserve-growth table")
    ap.add_argument("--top", type=_count, default=15, help="rows of the reserve-growth table")
    a = ap.parse_args()
    try:
        with open(a.pickle, "rb") as fh:
            snap = pickle.load(fh)
    except OSError as e:
        print(f"{a.pickle}: cannot be read ({e.strerror or e}); pass the memory_snapshot.pickle a run wrote",
              file=sys.stderr)
        return 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        print(f"{a.pickle}: not a pickle ({type(e).__name__}: {e}); pass the memory_snapshot.pickle a run wrote",
              file=sys.stderr)
        return 2
    if not isinstance(snap, dict) or not isinstance(snap.get("device_traces"), list):
        print(f"{a.pickle}: not a torch allocator history (no device_traces); pass the memory_snapshot.pickle a "
              "run wrote with the runner's memory_snapshot override", file=sys.stderr)
        return 2
    traces = snap.get("device_traces") or []
    for dev, trace in enumerate(traces):
        if not trace:
            continue
        print(f"== device {dev}: {len(trace)} events")
        live: dict[int, int] = {}
        per_stream: dict[int, int] = {}
        reserved: dict[int, int] = {}
        peak_total = 0
        peak_reserved, at_peak_reserved = 0, {}
        grown_by: dict[tuple[int, str], int] = {}
        for i, e in enumerate(trace):
            act, size, stream = e.get("action"), int(e.get("size", 0)), int(e.get("stream", 0))
            if act == "alloc":
                live[e["addr"]] = size
                per_stream[stream] = per_stream.get(stream, 0) + size
                total = sum(per_stream.values())
                if size >= a.min_gib * GiB:
                    print(f"[{i}] alloc {size / GiB:.3f} GiB stream {stream}; allocated now "
                          f"{total / GiB:.3f} (by stream: "
                          + ", ".join(f"{s}: {v / GiB:.2f}" for s, v in per_stream.items()) + ")")
                    print("      " + frames_text(e.get("frames") or [], a.frames))
                if total > peak_total:
                    peak_total = total
            elif act in ("free_completed",):
                per_stream[stream] = per_stream.get(stream, 0) - live.pop(e["addr"], size)
            elif act in ("segment_alloc", "segment_map"):
                reserved[stream] = reserved.get(stream, 0) + size
                key = (stream, frames_text(e.get("frames") or [], a.by_frames))
                grown_by[key] = grown_by.get(key, 0) + size
                if sum(reserved.values()) > peak_reserved:
                    peak_reserved = sum(reserved.values())
                    at_peak_reserved = {"event": i, "reserved": dict(reserved), "allocated": dict(per_stream)}
                if size >= 0.25 * GiB:
                    print(f"[{i}] {act} +{size / GiB:.3f} GiB stream {stream} -> reserved "
                          + ", ".join(f"{s}: {v / GiB:.2f}" for s, v in reserved.items()))
            elif act in ("segment_free", "segment_unmap"):
                reserved[stream] = reserved.get(stream, 0) - size
        print(f"peak allocated seen in the trace (from its start): {peak_total / GiB:.3f} GiB")
        if at_peak_reserved:
            print(f"peak reserved growth seen in the trace: {peak_reserved / GiB:.3f} GiB at event "
                  f"[{at_peak_reserved['event']}]; by stream reserved / allocated then: "
                  + ", ".join(f"{s}: {v / GiB:.2f} / {at_peak_reserved['allocated'].get(s, 0) / GiB:.2f}"
                              for s, v in at_peak_reserved["reserved"].items()))
        print("reserve growth by stream and the frames that asked for it (largest first; gross: releases "
              "not subtracted):")
        for (stream, where), size in sorted(grown_by.items(), key=lambda kv: -kv[1])[: a.top]:
            if size < a.min_gib * GiB / 8:
                break
            print(f"  +{size / GiB:.3f} GiB stream {stream}\n      {where or '(no frames)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
