"""Data checks: the training file exists, parses as the configured format, and fits max_seq_length."""

from __future__ import annotations

import os

from fmllm_tui.checks._plugin import check

from fmllm_tui.findings import plural


@check("data.file", "Training data parses", "data")
def test_data_file(report, loaded, data_report):
    v = loaded.view
    key = loaded.file_key("paths.ft_combined_data_file")
    report.set(path=v.data_file, data_format=v.data_format)
    if v.fmllm.train_command:
        report.skip("fmllm.train_command runs your own script, which reads its own data")
    if not v.data_file:
        report.fail(f"no training data configured: set {key} to a JSONL file "
                    f"({v.data_format} format; README: Config reference, data_format)")
    if os.path.isdir(v.data_file):
        report.fail(f"{key} is {v.data_file}, a directory; point it at the JSONL file itself")
    if not os.path.exists(v.data_file):
        report.fail(f"the training data {v.data_file} does not exist (from {key}); "
                    "check the path, which is read relative to the config file's folder")
    rep = data_report
    report.set(rows=rep.rows, problems=[{"line": ln, "problem": msg} for ln, msg in rep.problems])
    if rep.problems:
        shown = "; ".join(f"{v.data_file}:{ln}: {msg}" for ln, msg in rep.problems[:3])
        more = f" (and {len(rep.problems) - 3} more)" if len(rep.problems) > 3 else ""
        report.fail(f"{plural(len(rep.problems), 'bad line')} in the training data: {shown}{more}")
    if rep.rows == 0:
        report.fail(f"{v.data_file} has no examples")
    report.ok(f"{rep.rows} {v.data_format} examples in {v.data_file}")


@check("data.lengths", "Examples fit max_seq_length", "data", severity="warning")
def test_data_lengths(report, loaded, data_report):
    v = loaded.view
    if data_report is None or data_report.rows == 0:
        report.skip("no readable training data (see data.file)")
    max_seq_length = v.training.max_seq_length
    lengths = sorted(data_report.lengths)
    share = data_report.share_over(max_seq_length) if max_seq_length else 0.0
    how = f"tokenized with {data_report.tokenizer}" if data_report.tokenizer else \
        "estimated from characters (no local tokenizer for this model yet)"
    p95 = lengths[int(0.95 * (len(lengths) - 1))]
    report.set(max_seq_length=max_seq_length, longest=lengths[-1], p95=p95, share_truncated=round(share, 4),
               token_counts=how, examples=len(lengths))
    if max_seq_length and share > 0:
        report.warn(f"{share:.1%} of the examples are longer than max_seq_length {max_seq_length} tokens and will be "
                    f"truncated (longest {lengths[-1]}, 95th percentile {p95}; {how}). Raise max_seq_length if "
                    "memory allows (fmllm-check shows the cost in config.fit), or shorten those examples.")
    report.ok(f"all {len(lengths)} examples fit in {max_seq_length} tokens (longest {lengths[-1]}; {how})")
