"""Log diagnosis: every pattern against real-world wordings, the multi-line analyses, the numbers
extracted from OOM messages, negatives, and hostile input (binary, CR-only bars, ANSI, bad UTF-8,
truncated last line, CRLF, blocks split mid-traceback, the multi-process path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fmllm_tui import logdiag
from fmllm_tui.findings import Change, Fix
from fmllm_tui.logadvice import PHASES
from fmllm_tui.logdiag import PATTERNS, Hit, scan_file, scan_lines

LOGS = Path(__file__).parent / "data" / "logs"
ALL_LOGS = sorted(LOGS.glob("*.log"))
POSITIVE = [p for p in ALL_LOGS if not p.name.startswith("neg__")]
NEGATIVE = [p for p in ALL_LOGS if p.name.startswith("neg__")]
GiB = 1024**3
MiB = 1024**2

FIX_IDS = {None, "memory.fit", "training.eval_batch", "training.max_seq_length", "dtype.compute", "attn.sdpa",
           "training.gc_reentrant", "tokenizer.pad_token", "training.learning_rate", "model.id", "model.adapter",
           "distributed.fsdp_storage", "training.save_total_limit", "env.alloc_conf"}


def fixof(h: Hit) -> dict[str, Any]:
    """The hit's fix as JSON (the shape every face reads), each change as its key and value."""
    assert isinstance(h.fix, Fix), f"{h.pattern} has no fix"
    return {**h.fix.to_json(), "changes": [{"key": c.key, "to": c.to} for c in h.fix.changes]}


def ids(hits: list[Hit]) -> set[str]:
    return {h.pattern for h in hits}


def first_is(lines: list[str], pid: str) -> None:
    """The scan of these lines ranks ``pid`` first."""
    got = scan_lines(lines)
    assert got and got[0].pattern == pid, [h.pattern for h in got]


def hit(hits: list[Hit], pid: str) -> Hit:
    found = [h for h in hits if h.pattern == pid]
    assert found, f"{pid} not in {[h.pattern for h in hits]}"
    return found[0]


# ---- the table ---------------------------------------------------------------------------------


def test_table_is_complete_and_well_formed() -> None:
    assert len(PATTERNS) >= 30
    seen = set()
    for p in PATTERNS:
        assert p.id not in seen
        seen.add(p.id)
        assert p.severity in ("error", "warning", "info")
        assert p.cause and p.title
        if p.fix is not None:
            assert isinstance(p.fix, Fix)  # one shape for fixes: findings.Fix, no dicts to convert
            assert p.fix.id in FIX_IDS, p.fix.id
            assert p.fix.summary
            for ch in p.fix.changes:
                assert isinstance(ch, Change)
                # canonical names: section.key, or one of the top-level settings
                assert "." in ch.key or ch.key in ("base_model_name", "use_adapter", "data_format")
        json.dumps(p.to_json())


@pytest.mark.parametrize("pid", [p.id for p in PATTERNS])
def test_every_pattern_has_two_real_excerpts(pid: str) -> None:
    files = [p for p in POSITIVE if p.name.split("__")[0] == pid]
    assert len(files) >= 2, f"pattern {pid} needs at least two excerpts in tests/data/logs"


# ---- each excerpt finds its pattern --------------------------------------------------------------


@pytest.mark.parametrize("path", POSITIVE, ids=[p.name for p in POSITIVE])
def test_excerpt_finds_its_pattern(path: Path) -> None:
    pid = path.name.split("__")[0]
    hits = scan_file(path)
    assert pid in ids(hits), f"{path.name}: got {[(h.pattern, h.line) for h in hits]}"
    h = hit(hits, pid)
    assert h.file == str(path)
    assert 1 <= h.line <= h.last_line
    assert h.count >= 1
    assert h.cause and h.excerpt and len(h.excerpt) <= 300
    assert "\x1b" not in h.excerpt
    assert h.severity in ("error", "warning", "info")
    d = h.to_json()
    assert set(d) == {"pattern", "file", "line", "last_line", "excerpt", "count", "cause", "fix", "severity", "phase", "values"}
    assert d["phase"] in PHASES
    json.dumps(d)
    if h.fix is not None:
        assert fixof(h)["id"] in FIX_IDS
        assert fixof(h)["summary"]


@pytest.mark.parametrize("path", NEGATIVE, ids=[p.name for p in NEGATIVE])
def test_lookalikes_are_not_failures(path: Path) -> None:
    hits = scan_file(path)
    # a deprecation notice (torch's use_reentrant default, a FutureWarning) in a healthy run is said as what it is,
    # an info note that the run goes on; nothing else may be reported
    failures = [h for h in hits if not (h.pattern == "deprecation_info" and h.severity == "info")]
    assert failures == [], [(h.pattern, h.line, h.excerpt) for h in failures]


# ---- OOM numbers and phases -----------------------------------------------------------------------


def test_oom_new_wording_numbers() -> None:
    h = hit(scan_file(LOGS / "cuda_oom__torch25_train_step.log"), "cuda_oom")
    v = h.values
    assert v["tried_to_allocate_bytes"] == int(1.96 * GiB)
    assert v["total_bytes"] == int(23.64 * GiB)
    assert v["free_bytes"] == int(1.03 * GiB)
    assert v["reserved_unallocated_bytes"] == int(346.58 * MiB)
    assert v["this_process_bytes"] == int(22.60 * GiB)
    assert v["other_process_bytes"] == 0
    assert v["phase"] == "training" and v["step"] == 1
    assert v["gpu"] == 0
    assert h.line == 19
    assert "1.96 GiB" in h.cause and "23.64 GiB" in h.cause
    assert fixof(h)["id"] == "memory.fit"
    assert "accelerate" not in v.get("raised_in", "") or v["raised_in"]


def test_oom_old_wording_numbers() -> None:
    h = hit(scan_file(LOGS / "cuda_oom__torch20_old_wording.log"), "cuda_oom")
    v = h.values
    assert v["tried_to_allocate_bytes"] == 172 * MiB
    assert v["total_bytes"] == int(14.75 * GiB)
    assert v["allocated_bytes"] == int(13.48 * GiB)
    assert v["free_bytes"] == int(64.81 * MiB)
    assert v["reserved_bytes"] == int(13.66 * GiB)
    assert v["reserved_unallocated_bytes"] == int(13.66 * GiB) - int(13.48 * GiB)


def test_eval_oom_fixes_the_eval_batch_not_the_train_batch() -> None:
    for name in ("cuda_oom_eval__prediction_step.log", "cuda_oom_eval__eval_bar_no_frames.log"):
        hits = scan_file(LOGS / name)
        h = hit(hits, "cuda_oom_eval")
        assert h.values["phase"] == "eval"
        assert fixof(h)["id"] == "training.eval_batch"
        assert [c["key"] for c in fixof(h)["changes"]] == ["training.per_device_eval_batch_size"]
        assert "cuda_oom" not in ids(hits)


def test_loading_and_saving_oom_phases() -> None:
    for name in ("cuda_oom_loading__from_pretrained.log", "cuda_oom_loading__shards_bar_old.log"):
        h = hit(scan_file(LOGS / name), "cuda_oom_loading")
        assert h.values["phase"] == "load" and h.phase == "load"
    for name in ("cuda_oom_save__save_checkpoint.log", "cuda_oom_save__save_model_old.log"):
        h = hit(scan_file(LOGS / name), "cuda_oom_save")
        assert h.values["phase"] == "save"
        assert fixof(h)["shell"].startswith("export PYTORCH_CUDA_ALLOC_CONF=")


def test_late_step_oom_points_at_sequence_length() -> None:
    h = hit(scan_file(LOGS / "cuda_oom_late__step_700.log"), "cuda_oom_late")
    assert h.values["step"] == 701
    assert fixof(h)["id"] == "training.max_seq_length"
    assert "701" in h.cause
    early = hit(scan_file(LOGS / "cuda_oom__torch25_train_step.log"), "cuda_oom")
    assert early.values["step"] == 1


def test_fragmentation_and_other_process_findings() -> None:
    hits = scan_file(LOGS / "cuda_oom_fragmentation__large_unallocated.log")
    frag = hit(hits, "cuda_oom_fragmentation")
    assert frag.severity == "warning"
    assert fixof(frag)["shell"] == "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    assert frag.values["reserved_unallocated_bytes"] == int(3.71 * GiB)
    assert "cuda_oom" in ids(hits)
    assert "cuda_oom_fragmentation" not in ids(scan_file(LOGS / "cuda_oom__torch25_train_step.log"))

    other = hit(scan_file(LOGS / "gpu_other_process__two_processes.log"), "gpu_other_process")
    assert other.values["other_process_bytes"] == int(9.88 * GiB)
    assert "nvidia-smi" in fixof(other)["shell"]
    # container: two "Process N" entries, ours is the one matching PyTorch's reserved memory
    other2 = hit(scan_file(LOGS / "gpu_other_process__container_pids.log"), "gpu_other_process")
    assert other2.values["other_process_bytes"] == int(31.20 * GiB)
    # one "Process N" entry that is our own process (spec example): not another process
    line = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "23.64 GiB of which 1.12 GiB is free. Process 1234 has 22.50 GiB memory in use. Of the allocated memory "
            "20.1 GiB is allocated by PyTorch, and 1.9 GiB is reserved by PyTorch but unallocated.")
    hits = scan_lines([line])
    assert "gpu_other_process" not in ids(hits)
    assert hit(hits, "cuda_oom").values["other_process_bytes"] == 0


def test_oom_split_over_lines_is_still_read() -> None:
    lines = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity",
             "of 8.00 GiB of which 0 bytes is free. Of the allocated memory 14.51 GiB is allocated by PyTorch,",
             "and 15.90 MiB is reserved by PyTorch but unallocated."]
    v = hit(scan_lines(lines), "cuda_oom").values
    assert v["free_bytes"] == 0 and v["total_bytes"] == 8 * GiB and v["tried_to_allocate_bytes"] == 20 * MiB


# ---- multi-line analyses --------------------------------------------------------------------------


def test_nan_after_finite_steps() -> None:
    h = hit(scan_file(LOGS / "loss_nan__after_finite_steps.log"), "loss_nan")
    assert h.values["finite_logs_before"] == 4
    assert h.values["last_finite_loss"] == pytest.approx(1.8893)
    assert h.line == 7 and h.last_line == 9 and h.count == 3
    assert "after 4 finite" in h.cause and "grad_norm grew" in h.cause
    assert fixof(h)["id"] == "training.learning_rate"
    h0 = hit(scan_file(LOGS / "loss_nan__zero_loss_nan_grad.log"), "loss_nan")
    assert h0.values["finite_logs_before"] == 0 and h0.values["key"] == "grad_norm"
    assert fixof(h0)["id"] == "dtype.compute"


def test_flat_loss_at_ln_vocab() -> None:
    h = hit(scan_file(LOGS / "loss_flat__collapsed_lr.log", vocab_size=32000), "loss_flat")
    assert h.values["ln_vocab"] == pytest.approx(10.3735, abs=1e-3)
    assert fixof(h)["id"] == "training.learning_rate"
    assert "rose" in h.cause
    h2 = hit(scan_file(LOGS / "loss_flat__random_weights.log", vocab_size=128256), "loss_flat")
    assert "from the start" in h2.cause
    # without the vocab size it still sees a plateau at a plausible ln(vocab)
    h3 = hit(scan_file(LOGS / "loss_flat__random_weights.log"), "loss_flat")
    assert 100_000 < h3.values["vocab_size_estimate"] < 160_000
    # a vocab that does not fit the plateau: no finding
    assert "loss_flat" not in ids(scan_file(LOGS / "loss_flat__random_weights.log", vocab_size=1000))
    # a healthy, decreasing loss: no finding
    assert "loss_flat" not in ids(scan_file(LOGS / "neg__successful_run.log", vocab_size=32000))


def test_traceback_last_frame_names_the_culprit() -> None:
    h = hit(scan_file(LOGS / "exception__keyerror_user_code.log"), "exception")
    assert h.values["exception"] == "KeyError"
    assert h.values["file"] == "/home/u/prep.py" and h.values["line"] == 21
    assert h.values["function"] == "format_example"
    assert "format_example" in h.cause
    # raised inside trl calling transformers: trl is the side to move (library_api_changed, not a bare exception)
    skew = hit(scan_file(LOGS / "library_api_changed__trl_passes_a_renamed_argument.log"), "library_api_changed")
    assert skew.values["library"] == "trl"
    assert fixof(skew)["shell"] == "pip install -U trl"
    # a generic CUDA error whose last frames are in bitsandbytes names bitsandbytes
    cu = hit(scan_file(LOGS / "cuda_error__illegal_access_bnb.log"), "cuda_error")
    assert cu.values["package"] == "bitsandbytes"
    assert "bitsandbytes" in fixof(cu)["shell"]


def test_specific_error_suppresses_generic_exception() -> None:
    hits = scan_file(LOGS / "hub_not_found__typo.log")
    assert "exception" not in ids(hits)
    h = hit(hits, "hub_not_found")
    assert h.values["repo_id"] == "meta-lama/Llama-3.1-8B"


def test_ranks_dying_one_by_one() -> None:
    h = hit(scan_file(LOGS / "ranks_failed__four_ranks.log"), "ranks_failed")
    assert h.values["ranks"] == [1, 2, 3]
    assert h.values["first_failed_rank"] == 2
    assert h.values["exitcodes"][1] == -6
    assert "illegal memory access" in h.values.get("first_error", "")
    k = hit(scan_file(LOGS / "ranks_failed__sigkill_two.log"), "ranks_failed")
    assert k.values["first_failed_rank"] == 1 and "OOM killer" in k.cause
    assert "host_oom" not in ids(scan_file(LOGS / "neg__successful_run.log"))


def test_nccl_timeout_values() -> None:
    h = hit(scan_file(LOGS / "nccl_timeout__watchdog_torch2.log"), "nccl_timeout")
    assert h.values["op"] == "ALLREDUCE" and h.values["timeout_ms"] == 600000
    assert "NCCL_DEBUG=INFO" in fixof(h)["shell"]


def test_disk_full_points_df_at_the_directory() -> None:
    h = hit(scan_file(LOGS / "disk_full__errno28_checkpoint.log"), "disk_full")
    assert fixof(h)["id"] == "training.save_total_limit"
    assert fixof(h)["shell"] == "df -h /mnt/work/out/checkpoint-1400"


def test_gated_repo_values_and_secret_masking() -> None:
    hits = scan_file(LOGS / "hub_gated__transformers_oserror.log")
    h = hit(hits, "hub_gated")
    assert h.values["repo_id"] == "meta-llama/Llama-2-7b-hf"
    assert fixof(h)["shell"] == "hf auth login"
    pending = hit(scan_file(LOGS / "hub_gated__hub1x_pending.log"), "hub_gated")
    assert "pending" in pending.cause
    line = "OSError: You are trying to access a gated repo. token=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123"
    (g,) = [x for x in scan_lines([line]) if x.pattern == "hub_gated"]
    assert "hf_AbCd" not in g.excerpt and "hf_***" in g.excerpt
    lines = ["Traceback (most recent call last):", '  File "/home/u/t.py", line 3, in <module>',
             "TypeError: login() got an unexpected keyword argument 'tokn' (token=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123)"]
    (e,) = scan_lines(lines)
    assert "hf_AbCd" not in json.dumps(e.to_json())


def test_dedup_counts_first_and_last_line() -> None:
    hits = scan_file(LOGS / "flash_attn_unsupported_gpu__v100_rank.log")
    h = hit(hits, "flash_attn_unsupported_gpu")
    assert (h.line, h.last_line, h.count) == (1, 2, 2)


# ---- hostile input -------------------------------------------------------------------------------

OOM = (b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
       b"23.64 GiB of which 1.12 GiB is free. Including non-PyTorch memory, this process has 22.50 GiB memory in use. "
       b"Of the allocated memory 20.10 GiB is allocated by PyTorch, and 1.90 GiB is reserved by PyTorch but unallocated.")


def test_binary_garbage_ansi_bad_utf8_cr_and_truncation(tmp_path: Path) -> None:
    garbage = bytes(b for b in range(256) if b not in (10, 13)) * 40 + b"\x00\xff\xfe" * 500
    data = (garbage + b"\n"
            + b"".join(b"\r %d%%|#   | %d/100 [00:0%d<00:10, 1.0it/s]" % (i, i, i % 10) for i in range(1, 40))
            + b"\x1b[31m" + OOM + b"\x1b[0m\r\n"
            + b"caf\xe9 \xc3\x28 invalid utf8 \xed\xa0\x80\r\n"
            + b"Killed")  # truncated last line, no newline
    p = tmp_path / "hostile.log"
    p.write_bytes(data)
    hits = scan_file(p)
    assert {"cuda_oom_late", "host_oom"} <= ids(hits)
    oom = hit(hits, "cuda_oom_late")
    assert oom.line == 2 and "\x1b" not in oom.excerpt and oom.values["step"] == 39
    assert hit(hits, "host_oom").line == 4


def test_cr_progress_bar_on_the_error_line_gives_the_step() -> None:
    bars = "".join(f"\r {i}%|#   | {i}/100 [00:{i:02d}<00:10, 1.0it/s]" for i in range(1, 31))
    lines = ["{'loss': 1.2, 'grad_norm': 0.3, 'learning_rate': 0.0002, 'epoch': 0.1}", bars + "\r" + OOM.decode(),
             "{'loss': 1.1, 'grad_norm': 0.3, 'learning_rate': 0.0002, 'epoch': 0.2}"] + [
             "{'loss': 1.0, 'grad_norm': 0.3, 'learning_rate': 0.0002, 'epoch': 0.3}"] * 50 + [
             " 99%|####| 99/100 [01:40<00:01, 1.0it/s]"]
    h = hit(scan_lines(lines), "cuda_oom_late")
    assert h.values["step"] == 30 and h.line == 2


def test_crlf_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "win.log"
    p.write_bytes(b"line one\r\nline two\r\n" + OOM + b"\r\nlast\r\n")
    (h,) = [x for x in scan_file(p) if x.pattern == "cuda_oom"]
    assert h.line == 3 and "\r" not in h.excerpt and h.excerpt.startswith("torch.OutOfMemoryError")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.log"
    p.write_bytes(b"")
    assert scan_file(p) == []
    with pytest.raises(FileNotFoundError):
        scan_file(tmp_path / "nope.log")
    with pytest.raises(IsADirectoryError):
        scan_file(tmp_path)
    assert scan_lines([]) == []


def test_scan_lines_accepts_str_and_bytes() -> None:
    hits = scan_lines(["{'loss': 1.2, 'epoch': 0.1}", b"ValueError: Attempting to unscale FP16 gradients.\n"], name="paste")
    h = hit(hits, "fp16_unscale")
    assert h.file == "paste" and h.line == 2


def _concat(tmp_path: Path) -> Path:
    big = tmp_path / "all.log"
    with open(big, "wb") as f:
        for path in ALL_LOGS:
            f.write(path.read_bytes())
            f.write(b"\n" + b"{'loss': 1.0, 'grad_norm': 0.3, 'learning_rate': 0.0002, 'epoch': 0.5}\n" * 3)
    return big


def _summary(hits: list[Hit]) -> list[tuple[str, int, int, int]]:
    return sorted((h.pattern, h.line, h.last_line, h.count) for h in hits)


def test_tiny_blocks_give_the_same_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _concat(tmp_path)
    ref = _summary(scan_file(big))
    assert len(ref) > 40
    monkeypatch.setattr(logdiag, "BLOCK", 3000)
    monkeypatch.setattr(logdiag, "LOOKAHEAD", 65536)  # windows must fit in the lookahead
    assert _summary(scan_file(big)) == ref
    assert _summary(scan_lines(big.read_bytes().splitlines(keepends=True), name=str(big))) == ref


@pytest.mark.skipif(sys.platform != "linux", reason="the fork-based worker path is exercised on Linux")
def test_parallel_path_matches_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _concat(tmp_path)
    ref = _summary(scan_file(big))
    monkeypatch.setattr(logdiag, "BLOCK", 5000)
    monkeypatch.setattr(logdiag, "LOOKAHEAD", 65536)
    monkeypatch.setattr(logdiag, "PARALLEL_MIN", 1)
    monkeypatch.setattr(logdiag.os, "cpu_count", lambda: 2)
    assert _summary(scan_file(big)) == ref
    # from a thread (as the TUI calls it) the workers are started without fork
    import threading

    out: list[list[Hit]] = []
    t = threading.Thread(target=lambda: out.append(scan_file(big)))
    t.start()
    t.join(120)
    assert out and _summary(out[0]) == ref


# ---- details that the cause and fix depend on -------------------------------------------------------


def test_first_failed_rank_decides_the_cause() -> None:
    h = hit(scan_file(LOGS / "ranks_failed__four_ranks.log"), "ranks_failed")
    assert "SIGABRT" not in h.cause and "SIGKILL" not in h.cause  # rank 2 (first) exited with code 1
    assert "rank 2 failed first" in h.cause


def test_shared_memory_is_not_the_disk() -> None:
    hits = scan_file(LOGS / "shm_exhausted__torch_file.log")
    assert ids(hits) == {"shm_exhausted"}


def test_values_for_gpu_arch_data_row_signal_and_cpu_allocation() -> None:
    k = hit(scan_file(LOGS / "no_kernel_image__rtx5090.log"), "no_kernel_image")
    assert k.values["gpu"] == "NVIDIA GeForce RTX 5090" and k.values["arch"] == "sm_120"
    assert "sm_90" in k.values["supported"]
    d = hit(scan_file(LOGS / "data_invalid__json_parse.log"), "data_invalid")
    assert d.values.get("line") == 2 or d.values.get("row") == 117
    s = hit(scan_file(LOGS / "signal_hangup__ssh_closed.log"), "signal_hangup")
    assert s.values["signal"] == 1 and "SIGHUP" in s.cause
    c = hit(scan_file(LOGS / "host_oom__cpu_allocator.log"), "host_oom")
    assert c.values["tried_to_allocate_bytes"] == 28311552000 and "allocation failed" in c.cause
    m = hit(scan_file(LOGS / "module_missing__peft.log"), "module_missing")
    assert fixof(m)["shell"] == "pip install peft"
    assert fixof(hit(scan_file(LOGS / "module_missing__flash_attn.log"), "module_missing"))["id"] == "attn.sdpa"


def test_other_process_changes_the_oom_advice() -> None:
    h = hit(scan_file(LOGS / "gpu_other_process__two_processes.log"), "cuda_oom")
    assert "Other processes held 9.88 GiB" in h.cause


def test_errors_sort_before_warnings() -> None:
    hits = scan_file(LOGS / "no_grad_checkpointing__peft_gc.log")
    assert [h.pattern for h in hits] == ["no_grad_checkpointing", "gc_inputs_no_grad"]


def test_string_formatted_trainer_logs() -> None:
    h = hit(scan_file(LOGS / "loss_nan__tf5_string_values.log"), "loss_nan")
    assert h.values["finite_logs_before"] == 3 and h.values["step"] == 35
    assert h.values["last_finite_loss"] == pytest.approx(1.791)


def test_ipython_traceback_phase() -> None:
    lines = ["---------------------------------------------------------------------------",
             "OutOfMemoryError                          Traceback (most recent call last)",
             "Cell In[7], line 2",
             "      1 trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ev)",
             "----> 2 trainer.train()",
             "",
             "File /usr/local/lib/python3.10/dist-packages/transformers/trainer.py:4061, in Trainer.prediction_step(self, model, inputs)",
             "   4060 with torch.no_grad():",
             "-> 4061     outputs = model(**inputs)",
             "",
             "OutOfMemoryError: CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.75 GiB "
             "of which 1.02 GiB is free. Process 881 has 13.72 GiB memory in use. Of the allocated memory 13.50 GiB is "
             "allocated by PyTorch, and 95.12 MiB is reserved by PyTorch but unallocated."]
    h = hit(scan_lines(lines), "cuda_oom_eval")
    # IPython names the exception in its header (line 2) and again at the end (line 11): one finding
    assert (h.line, h.last_line, h.count) == (2, 11, 2) and h.values["phase"] == "eval" and h.phase == "eval"


def _all_fixes() -> list[dict[str, Any]]:
    from fmllm_tui import logpatterns

    fixes = [p.fix for p in PATTERNS if p.fix] + [v for k, v in vars(logpatterns).items() if k.startswith("FIX_")]
    return [f.to_json() for f in fixes if f]


def test_fix_changes_name_real_config_settings() -> None:
    from pydantic import BaseModel

    from fmllm_tui.config import FineTuneConfig

    for f in _all_fixes():
        for ch in f["changes"]:
            model: type[BaseModel] = FineTuneConfig
            parts = ch["key"].split(".")
            for i, part in enumerate(parts):
                assert part in model.model_fields, f"{ch['key']} is not a config setting"
                ann = model.model_fields[part].annotation
                if i < len(parts) - 1:
                    assert isinstance(ann, type) and issubclass(ann, BaseModel), ch["key"]
                    model = ann


@pytest.mark.parametrize(("line", "pid"), [
    ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 MiB (GPU 0; 3.95 GiB total capacity; 3.35 GiB already "
     "allocated; 1.19 MiB free; 3.40 GiB reserved in total by PyTorch)", "cuda_oom"),
    ("torch.OutOfMemoryError: HIP out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of 63.98 GiB of "
     "which 0 bytes is free. Of the allocated memory 62.1 GiB is allocated by PyTorch, and 1.2 GiB is reserved by "
     "PyTorch but unallocated.", "cuda_oom"),
    ("AttributeError: module 'bitsandbytes.nn' has no attribute 'Linear4bit'", "bnb_not_installed"),
    ("ValueError: `rope_scaling` must be a dictionary with two fields, `type` and `factor`, got {'factor': 8.0, "
     "'rope_type': 'llama3'}", "transformers_too_old"),
    ("NotImplementedError: Cannot copy out of meta tensor; no data!", "modules_offloaded"),
    ("ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.", "nccl_error"),
    ("OSError: Can't load tokenizer for 'llama-7b'. If you were trying to load it from "
     "'https://huggingface.co/models', make sure you don't have a local directory with the same name.", "hub_not_found"),
    ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
     "'/content/drive/MyDrive/llama'. Use `repo_type` argument if needed.", "hub_not_found"),
    ("OSError: [Errno 122] Disk quota exceeded: '/home/u/out/checkpoint-200/adapter_model.safetensors'", "disk_full"),
    ("OSError: Not enough disk space. Needed: 14.23 GiB (download: 5.01 GiB, generated: 9.22 GiB)", "cache_disk_full"),
    ("OSError: [Errno 12] Cannot allocate memory", "host_oom"),
    ("ImportError: This modeling file requires the following packages that were not found in your environment: "
     "flash_attn. Run `pip install flash_attn`", "module_missing"),
    ("ValueError: fp16 mixed precision requires a GPU (not 'mps').", "no_cuda"),
    ("requests.exceptions.SSLError: HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded",
     "hub_unreachable"),
    # issue 21's families, in other versions' wordings
    ("    /usr/include/python3.10/pyconfig.h:3:12: fatal error: Python.h: No such file or directory", "cuda_toolkit_env"),
    ("RuntimeError: Detected that PyTorch and torchvision were compiled with different CUDA major versions. PyTorch has "
     "CUDA Version=11.7 and torchvision has CUDA Version=12.1.", "extension_abi"),
    ("[2023-05-02 11:04:12,551] [INFO] [loss_scaler.py:188:update_scale] [deepspeed] OVERFLOW! Rank 0 Skipping step. "
     "Attempted loss scale: 65536, but hysteresis is 2. Reducing hysteresis to 1", "zero_stage_numeric"),
    ("[deepspeed] fp16 dynamic loss scale overflow! Skipping step. Attempted loss scale: 4294967296, reducing to 2147483648",
     "zero_stage_numeric"),
    ("UserWarning: Not enough free disk space to download the file. The expected file size is: 4997.75 MB. The target "
     "location /root/.cache/huggingface/hub/models--Qwen--Qwen2.5-7B/blobs only has 1234.00 MB free disk space.",
     "cache_disk_full"),
    ("ImportError: libnccl.so.2: cannot open shared object file: No such file or directory", "shared_lib_missing"),
    ("huggingface_hub.errors.EntryNotFoundError: 404 Client Error. (Request ID: Root=1-6) Entry Not Found for url: "
     "https://huggingface.co/Qwen/Qwen2.5-7B/resolve/main/adapter_config.json.", "hub_http_404"),
    ("{'train_runtime': 512.1, 'train_samples_per_second': 3.1, 'train_steps_per_second': 0.2, 'train_loss': 0.0, "
     "'epoch': 3.0}", "loss_zero"),
])
def test_more_real_wordings(line: str, pid: str) -> None:
    noise = ["{'loss': '1.234', 'grad_norm': '0.5', 'learning_rate': '0.0002', 'epoch': '0.1'}",
             " 12%|█▏        | 12/100 [00:24<02:56,  2.00s/it]"]
    assert pid in ids(scan_lines([*noise, line, *noise]))


def test_unknown_model_type_keyerror_means_old_transformers() -> None:
    lines = ["Traceback (most recent call last):",
             '  File "/usr/local/lib/python3.10/site-packages/transformers/models/auto/configuration_auto.py", line 1034, in from_pretrained',
             "    config_class = CONFIG_MAPPING[config_dict[\"model_type\"]]",
             '  File "/usr/local/lib/python3.10/site-packages/transformers/models/auto/configuration_auto.py", line 736, in __getitem__',
             "    raise KeyError(key)",
             "KeyError: 'qwen2'"]
    hits = scan_lines(lines)
    assert ids(hits) == {"transformers_too_old"}
    assert hit(hits, "transformers_too_old").values["model_type"] == "qwen2"


def test_engine_imports_no_torch_or_textual() -> None:
    import subprocess

    code = ("import sys, fmllm_tui.logdiag as d; d.scan_lines(['RuntimeError: CUDA error: out of memory']); "
            "print(sorted(m for m in ('torch', 'textual', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_suggested_hub_commands_exist_in_the_installed_hf_cli() -> None:
    """Every `hf ...` command fmllm suggests (log fixes, model checks, the smoke test) is one the
    installed huggingface_hub CLI has (the old `huggingface-cli` is gone from it)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("fmllm_tui/**/*.py"), *root.glob("checks/*.py")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    assert "huggingface-cli" not in text
    commands = set(re.findall(r"\bhf ((?:auth|cache) [a-z]+|download)\b", text))
    assert {"auth login", "download", "cache ls"} <= commands, commands
    hf = Path(sys.executable).parent / "hf"
    assert hf.exists(), f"{hf}: huggingface_hub's CLI is not installed next to this Python"
    for cmd in sorted(commands):
        proc = subprocess.run([str(hf), *cmd.split(), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (cmd, proc.stdout[-500:], proc.stderr[-500:])


# ---- the pre-filter is derived from every pattern: no line is invisible (issue 21 item 3) ----------

from fmllm_tui import logprefilter  # noqa: E402
from fmllm_tui.logadvice import RunSettings  # noqa: E402

REAL = Path(__file__).parent / "data" / "reallogs"


def _fit_reallogs() -> list[Path]:
    """The corpus logs whose manifest says split: fit (heldout ones are never opened by tests)."""
    out = []
    for man in sorted(REAL.glob("*.json")):
        if json.loads(man.read_text()).get("split") == "fit" and man.with_suffix(".log").is_file():
            out.append(man.with_suffix(".log"))
    return out


def _lines_a_pattern_matches(data: bytes) -> set[int]:
    """1-based numbers of the lines (as the engine cleans them) that some pattern's regex matches."""
    out = set()
    for i, raw in enumerate(data.split(b"\n"), 1):
        body = logdiag._split_rank(logdiag._clean(raw))[1].strip()
        if body and any(p.rx is not None and p.rx.search(body) for p in PATTERNS):
            out.add(i)
    return out


def _prefiltered_lines(pf: logprefilter.Prefilter, data: bytes) -> set[int]:
    return {data.count(b"\n", 0, off) + 1 for off in pf.line_ends(data, 0, len(data))}


@pytest.mark.parametrize("engine", ["hyperscan", "re"] if logprefilter.ENGINE == "hyperscan" else ["re"])
def test_prefilter_passes_every_line_a_pattern_matches(engine: str) -> None:
    pf = logprefilter.Prefilter(engine=engine)
    paths = ALL_LOGS + _fit_reallogs()
    assert len(paths) > 150
    for path in paths:
        data = path.read_bytes()
        missing = _lines_a_pattern_matches(data) - _prefiltered_lines(pf, data)
        assert not missing, f"{path.name}: lines {sorted(missing)} match a pattern but the pre-filter skips them"


def test_both_prefilter_engines_pass_the_same_lines() -> None:
    if logprefilter.ENGINE != "hyperscan":
        pytest.skip("hyperscan is not installed here")
    hs, py = logprefilter.Prefilter(engine="hyperscan"), logprefilter.Prefilter(engine="re")
    for path in ALL_LOGS:
        data = path.read_bytes()
        assert _prefiltered_lines(hs, data) == _prefiltered_lines(py, data), path.name


@pytest.mark.parametrize("lines,pid", [
    # the old hand list (rror, Warning, nan, Killed, ...) never decoded these lines
    (["NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation."],
     "no_kernel_image"),
    (["No executable batch size found, reached zero."], "auto_batch_exhausted"),
    (["  0%|          | 0/10 [00:00<?, ?it/s]", "Some modules are dispatched on the CPU or the disk. Make sure you have enough GPU RAM."],
     "modules_offloaded"),
    (["[rank1]:[W reducer.cpp:1389] Expected to have finished reduction in the prior iteration before starting a new one."],
     "ddp_reentrant"),
])
def test_lines_without_the_old_trigger_words_are_seen(lines: list[str], pid: str) -> None:
    assert pid in ids(scan_lines(lines))


# ---- phases and the config (issue 21 item 4) --------------------------------------------------------


def test_every_finding_names_its_phase() -> None:
    expect = {"cuda_oom_loading__from_pretrained.log": "load", "cuda_oom_save__save_checkpoint.log": "save",
              "cuda_oom_eval__prediction_step.log": "eval", "cuda_oom_generation__grpo_generate.log": "generation",
              "cuda_oom_generation__predict_with_generate.log": "generation", "cuda_oom_merge__export_bar.log": "merge",
              "cuda_oom__torch25_train_step.log": "training", "gc_inputs_no_grad__torch21.log": "first_step"}
    for name, phase in expect.items():
        hits = scan_file(LOGS / name)
        assert hits[0].phase == phase, (name, [(h.pattern, h.phase) for h in hits])


def test_merge_progress_bars_are_not_training_steps() -> None:
    h = hit(scan_file(LOGS / "cuda_oom_merge__export_bar.log"), "cuda_oom_merge")
    assert "step" not in h.values or h.values["step"] != 301
    assert h.fix is not None and "CUDA_VISIBLE_DEVICES" in (h.fix.shell or "")
    assert not any(c.key.startswith("training.") for c in h.fix.changes)


def test_oom_outside_training_never_gets_the_train_batch_fix() -> None:
    for name in ("cuda_oom_eval__prediction_step.log", "cuda_oom_generation__grpo_generate.log",
                 "cuda_oom_merge__merge_and_unload.log", "cuda_oom_save__save_checkpoint.log",
                 "model_too_big_per_card__accelerate_ranks.log"):
        fx = scan_file(LOGS / name)[0].fix
        keys = {c.key for c in fx.changes} if fx else set()
        assert not keys & {"training.per_device_train_batch_size", "training.gradient_checkpointing"}, name


def test_training_oom_fix_reads_what_the_config_already_does() -> None:
    log = LOGS / "cuda_oom__torch25_train_step.log"
    # batch 4, no checkpointing: halve the batch (keeping the effective batch) and turn checkpointing on
    fx = fixof(scan_file(log, settings=RunSettings(micro_batch=4, grad_accum=2, gradient_checkpointing=False,
                                                   max_seq_length=2048, use_4bit=True, loss="plain"))[0])
    assert {"key": "training.per_device_train_batch_size", "to": 2} in fx["changes"]
    assert {"key": "training.gradient_accumulation_steps", "to": 4} in fx["changes"]
    assert {"key": "training.gradient_checkpointing", "to": True} in fx["changes"]
    # micro-batch 1 with checkpointing on: neither is advised again; the loss and the length are
    fx = fixof(scan_file(log, settings=RunSettings(micro_batch=1, grad_accum=8, gradient_checkpointing=True,
                                                   max_seq_length=2048, use_4bit=True, loss="plain"))[0])
    keys = [c["key"] for c in fx["changes"]]
    assert "training.per_device_train_batch_size" not in keys and "training.gradient_checkpointing" not in keys
    assert {"key": "fmllm.loss", "to": "chunked"} in fx["changes"]
    assert {"key": "training.max_seq_length", "to": 1024} in fx["changes"]
    assert "already" in fx["summary"]
    # the plan already runs a chunked loss: only the length is left
    fx = fixof(scan_file(log, settings=RunSettings(micro_batch=1, gradient_checkpointing=True, max_seq_length=512,
                                                   use_4bit=True, loss="chunked"))[0])
    assert [c["key"] for c in fx["changes"]] == ["training.max_seq_length"]


def test_eval_oom_with_eval_batch_one_does_not_halve_it() -> None:
    fx = fixof(scan_file(LOGS / "cuda_oom_eval__prediction_step.log", settings=RunSettings(eval_batch=1))[0])
    assert fx["changes"] == [] and "eval batch of 1 already" in fx["summary"]


# ---- ranking: the root cause first (issue 21 item 5) -------------------------------------------------


def test_root_cause_ranks_before_its_consequences() -> None:
    lines = [
        "[rank1]:[E ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=1251, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=1800000) ran for 1800427 milliseconds before timing out.",
        "[rank0]: Traceback (most recent call last):",
        '[rank0]:   File "/w/train.py", line 9, in <module>',
        "[rank0]:     trainer.train()",
        "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
        "of which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.11 GiB memory in use. Of the allocated "
        "memory 75.20 GiB is allocated by PyTorch, and 1.90 GiB is reserved by PyTorch but unallocated.",
        "subprocess.CalledProcessError: Command '['/usr/bin/python', 'train.py']' returned non-zero exit status 1.",
    ]
    hits = scan_lines(lines)
    assert hits[0].pattern.startswith("cuda_oom"), [h.pattern for h in hits]
    assert {"nccl_timeout", "launcher_failed"} <= ids(hits)


def test_every_expression_has_a_required_literal_for_the_pure_python_engine() -> None:
    """Without hyperscan, lines are found by literals every match must contain: an expression
    without one would be looked for on every line (correct, but as slow as no pre-filter)."""
    for name, rx, _ci in logprefilter.Prefilter(engine="re").exprs:
        import re as _re

        assert logprefilter._required_literals(_re._parser.parse(rx)), name  # type: ignore[attr-defined]


def test_load_oom_is_per_card_only_with_several_processes() -> None:
    oom = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU {g} has a total capacity of "
           "23.65 GiB of which 1.02 GiB is free.")

    def log(rank: int) -> list[str]:
        p = f"[rank{rank}]: "
        return [p + "Traceback (most recent call last):", p + '  File "/x/modeling_utils.py", line 9, in from_pretrained',
                p + "    x()", p + oom.format(g=rank)]

    assert scan_lines(log(0))[0].pattern == "cuda_oom_loading"  # torchrun with one process prefixes rank0 too
    h = scan_lines(log(1))[0]
    assert h.pattern == "model_too_big_per_card" and h.phase == "load"
    assert not {c["key"] for c in fixof(h)["changes"]} & {"training.per_device_train_batch_size"}
    assert scan_lines(log(0), settings=RunSettings(num_processes=4, use_4bit=True))[0].pattern == "model_too_big_per_card"


def test_one_huge_allocation_points_at_the_loss_and_length_not_the_batch() -> None:
    line = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.39 GiB. GPU 0 has a total capacity of 22.19 GiB "
            "of which 11.72 GiB is free. Process 751671 has 10.22 GiB memory in use. Of the allocated memory 7.48 GiB is "
            "allocated by PyTorch, and 2.01 GiB is reserved by PyTorch but unallocated.")
    h = hit(scan_lines([line]), "cuda_oom")
    assert h.values["single_allocation_share"] == 0.92
    keys = [c["key"] for c in fixof(h)["changes"]]
    assert keys == ["fmllm.loss", "training.max_seq_length"]
    assert "92% of the card" in h.cause


# ---- excerpts pasted the ways people paste them (issue 21) ----------------------------------------


def test_a_headerless_indented_traceback_closes_at_its_exception_line() -> None:
    # pip's build output indents the traceback; the paste starts below its header
    lines = ["  × python setup.py egg_info did not run successfully.",
             '        File "/tmp/pip-install-n7q/deepspeed_7/op_builder/builder.py", line 41, in installed_cuda_version',
             '          assert cuda_home is not None, "CUDA_HOME does not exist, unable to compile CUDA op(s)"',
             "      AssertionError: CUDA_HOME does not exist, unable to compile CUDA op(s)",
             "      [end of output]"]
    hits = scan_lines(lines)
    assert hits and hits[0].pattern == "cuda_toolkit_env" and hits[0].line == 4, [(h.pattern, h.line) for h in hits]
    # the message without its class, at the frames' depth, is a message too (not a source line)
    assert scan_lines([*lines[:3], "      CUDA_HOME does not exist, unable to compile CUDA op(s)"])[0].pattern == "cuda_toolkit_env"


def test_a_message_without_its_exception_class_reads_the_frames_above_it() -> None:
    # the frames say loading; the OOM line lost its 'torch.OutOfMemoryError: ' in the paste
    lines = ['[rank5]:   File "/r/site-packages/transformers/modeling_utils.py", line 787, in _load_state_dict_into_meta_model',
             "[rank5]:     param = param[...]",
             "[rank5]: CUDA out of memory. Tried to allocate 270.00 MiB. GPU 5 has a total capacity of 23.65 GiB of which "
             "208.06 MiB is free. Of the allocated memory 22.87 GiB is allocated by PyTorch, and 6.23 MiB is reserved by "
             "PyTorch but unallocated."]
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase) == ("model_too_big_per_card", "load"), (h.pattern, h.phase)


def test_a_message_wrapped_at_the_terminal_width_is_found() -> None:
    msg = ("[2024-05-01 10:00:01] ERROR train.py:88 RuntimeError: Expected all tensors to be on the same device, but "
           "found at least two devices, cuda:0 and cuda:1!")
    cut = msg.index("same dev") + 3  # a 100-column terminal cut the message inside the words the pattern needs
    h = scan_lines([msg[:cut], msg[cut:]])[0]
    assert h.pattern == "device_mismatch" and h.line == 1


def test_errno_2_without_its_class_is_a_missing_file_but_not_inside_a_warning() -> None:
    h = scan_lines(["[Errno 2] No such file or directory: 'data/train.jsonl'"])[0]
    assert h.pattern == "file_not_found" and h.values["path"] == "data/train.jsonl"
    warn = "/x/deepspeed/ops/op_builder/builder.py:38: UserWarning: [Errno 2] No such file or directory: '/usr/local/cuda/bin/nvcc'"
    assert "file_not_found" not in ids(scan_lines([warn]))


def test_a_checkpoint_without_its_trainer_state_is_a_resume_problem() -> None:
    h = scan_lines(["FileNotFoundError: [Errno 2] No such file or directory: 'outputs/out/checkpoint-9/trainer_state.json'"])[0]
    assert h.pattern == "resume_checkpoint_missing" and h.values["path"].endswith("checkpoint-9/trainer_state.json")
    assert scan_lines(["FileNotFoundError: [Errno 2] No such file or directory: 'out/checkpoint-9/notes.txt'"])[0].pattern == "file_not_found"


def test_a_compiler_error_ending_in_raised_reads_the_next_line() -> None:
    lines = ["torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised:",
             "RuntimeError: Cannot find a working triton installation. More information on installing Triton can be found at https://github.com/openai/triton"]
    h = hit(scan_lines(lines), "torch_compile_failed")
    assert "Cannot find a working triton" in h.excerpt


def test_a_traceback_header_drawn_after_a_progress_bar_keeps_its_source_lines() -> None:
    # the header's line starts with the bar's spaces: those are not the traceback's indent
    lines = ["  3%|▎         | 4/125 [00:02<01:18,  1.53it/s]Traceback (most recent call last):",
             '  File "/x/transformers/trainer.py", line 4061, in prediction_step',
             "    outputs = model(**inputs)",
             '  File "/x/transformers/models/llama/modeling_llama.py", line 1214, in forward',
             "    logits = logits.float()",
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.91 GiB."]
    h = scan_lines(lines)[0]
    assert h.pattern == "cuda_oom_eval" and h.values.get("in_loss") is True


def test_an_excerpt_cut_inside_its_traceback_says_so_only_when_nothing_else_explains_it() -> None:
    frames = ["Traceback (most recent call last):",
              '  File "/x/transformers/trainer.py", line 2348, in _save_checkpoint',
              "    self.save_model(output_dir, _internal_call=True)",
              '  File "/x/transformers/trainer.py", line 2873, in _save']
    h = scan_lines(frames)[0]
    assert (h.pattern, h.severity, h.phase, h.line) == ("log_cut_in_traceback", "info", "save", 4)
    # the exception line closes it: nothing is cut
    assert "log_cut_in_traceback" not in ids(scan_lines([*frames, "    self._save(x)", "RuntimeError: boom"]))
    # an error found elsewhere already explains the run: no note about the cut
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
    got = scan_lines([oom, *frames])
    assert got[0].pattern.startswith("cuda_oom") and "log_cut_in_traceback" not in ids(got)


def test_eval_oom_fix_names_the_eval_batch_it_read_from_the_config() -> None:
    log = LOGS / "cuda_oom_eval__prediction_step.log"
    fx = fixof(scan_file(log, settings=RunSettings(eval_batch=8, micro_batch=2))[0])
    assert fx["id"] == "training.eval_batch" and fx["changes"] == [{"key": "training.per_device_eval_batch_size", "to": 4}]
    assert "8 -> 4" in fx["summary"]
    assert fixof(scan_file(log)[0])["changes"] == [{"key": "training.per_device_eval_batch_size", "to": "halve"}]


def test_vscode_notebook_frames_printed_as_links_are_frames() -> None:
    lines = ["RuntimeError                              Traceback (most recent call last)",
             "---> 22 trainer.train()",
             "File [~/envs/x/lib/python3.10/site-packages/transformers/trainer.py:1664](https://vscode-remote+ssh/x/trainer.py:1664), "
             "in Trainer.train(self, resume_from_checkpoint)",
             "File [~/envs/x/lib/python3.10/site-packages/transformers/trainer.py:1940](https://vscode-remote+ssh/x/trainer.py:1940), "
             "in Trainer._inner_training_loop(self, batch_size)",
             "-> 1940 tr_loss_step = self.training_step(model, inputs)"]
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase) == ("log_cut_in_traceback", "first_step")
    assert h.values["last_frame"].endswith("trainer.py:1940 in Trainer._inner_training_loop")


def test_a_headerless_traceback_with_no_other_trigger_is_still_read() -> None:
    # only frames, no header and no word any pattern looks for: the frame lines themselves are decoded
    lines = ['  File "finetune_starcoder.py", line 323, in run_training',
             "    loop(args)",
             '  File "/h/.local/lib/python3.8/site-packages/transformers/trainer.py", line 2006, in _inner_training_loop',
             "    self._maybe_log_save_evaluate(tr_loss, model, trial, epoch, ignore_keys_for_eval)",
             '  File "/h/.local/lib/python3.8/site-packages/transformers/trainer.py", line 2348, in _save_checkpoint',
             "    self.save_model(output_dir, _internal_call=True)"]
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase, h.values["frames"]) == ("log_cut_in_traceback", "save", 3)


def test_building_the_optimizer_is_the_first_step_not_loading() -> None:
    # DeepSpeed builds its ZeRO optimizer (and JIT-compiles its op) in accelerator.prepare, after loading
    lines = ["Traceback (most recent call last):",
             '  File "train.py", line 101, in main',
             "    model, optimizer = accelerator.prepare(model, optimizer)",
             '  File "/x/site-packages/deepspeed/runtime/engine.py", line 1167, in _configure_optimizer',
             "    self.optimizer = self._configure_zero_optimizer(basic_optimizer)",
             "ImportError: /root/.cache/torch_extensions/py38_cu117/utils/utils.so: cannot open shared object file: "
             "No such file or directory"]
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase) == ("shared_lib_missing", "first_step")


def test_a_model_forward_with_no_other_frame_is_a_step_not_loading() -> None:
    lines = ["Traceback (most recent call last):",
             '  File "/x/site-packages/transformers/models/t5/modeling_t5.py", line 1722, in forward',
             "    lm_logits = self.lm_head(sequence_output)",
             '  File "/x/site-packages/torch/nn/modules/linear.py", line 114, in forward',
             "    return F.linear(input, self.weight, self.bias)"]  # the excerpt ends before the error line
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase) == ("log_cut_in_traceback", "first_step")
    # the same forward under a training bar that has moved on is a later training step
    assert scan_lines([" 40%|████      | 40/100 [00:40<01:00,  1.00it/s]", *lines])[0].phase == "training"


def test_a_frame_wrapped_inside_its_function_name_still_names_the_phase() -> None:
    # a terminal 112 columns wide cut '..., in _configure_optimizer' after 'in' and '_prepare_deepspeed' after '_'
    pre = '  File "/root/anaconda3/envs/mabing_py38/lib/python3.8/site-packages/'
    lines = ["Traceback (most recent call last):",
             pre + 'accelerate/accelerator.py", line 1367, in _',
             "prepare_deepspeed",
             "    engine, optimizer, _, lr_scheduler = deepspeed.initialize(**kwargs)",
             pre + 'deepspeed/runtime/engine.py", line 1167, in',
             " _configure_optimizer",
             "    self.optimizer = self._configure_zero_optimizer(basic_optimizer)"]
    h = scan_lines(lines)[0]
    assert (h.pattern, h.phase) == ("log_cut_in_traceback", "first_step")
    assert h.values["last_frame"].endswith("engine.py:1167 in _configure_optimizer")


def test_a_launcher_tail_alone_says_the_error_is_not_in_the_text() -> None:
    tail = ['  File "/x/site-packages/torch/distributed/launcher/api.py", line 263, in launch_agent',
            "    raise ChildFailedError(",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "============================================================",
            "/home/u/LLaMA-Factory/src/llamafactory/launcher.py FAILED"]
    h = scan_lines(tail)[0]
    assert h.pattern == "ranks_failed" and h.values["root_error_in_log"] is False
    assert "not in this text" in h.cause
    # with the rank's own error above the report, that error is the finding and the report is not marked
    oom = "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 270.00 MiB."
    got = scan_lines([oom, *tail])
    assert got[0].pattern.startswith("cuda_oom") or got[0].pattern == "model_too_big_per_card"
    assert all("root_error_in_log" not in h.values for h in got)


def test_a_jit_built_optimizer_op_that_fails_places_the_failure_at_the_first_step() -> None:
    # DeepSpeed loads fused_adam when the optimizer is built: with nothing else to go by, not loading
    so = ("ImportError: /home/u/.cache/torch_extensions/py310_cu117/fused_adam/fused_adam.so: cannot open shared "
          "object file: No such file or directory")
    assert [(h.pattern, h.phase) for h in scan_lines([so])] == [("shared_lib_missing", "first_step")]
    abi = ("ImportError: /root/.cache/torch_extensions/py310_cu117/cpu_adam/cpu_adam.so: undefined symbol: "
           "_ZN3c104cuda20CUDACachingAllocator9allocatorE")
    assert [(h.pattern, h.phase) for h in scan_lines([abi])] == [("extension_abi", "first_step")]
    # an op that is not an optimizer's keeps the pattern's own phase
    other = so.replace("fused_adam", "transformer_inference")
    assert scan_lines([other])[0].phase == "load"


def test_the_findings_an_oom_implies_name_its_phase() -> None:
    # FSDP's state-dict gather is a save even without frames: the other-process and fragmentation
    # findings the same message makes happened then too
    oom = ("torch.OutOfMemoryError: Failed to clone() tensor: CUDA out of memory. Tried to allocate 268.00 MiB. "
           "GPU 0 has a total capacity of 79.15 GiB of which 164.62 MiB is free. Process 95805 has 34.72 GiB memory "
           "in use. Including non-PyTorch memory, this process has 44.25 GiB memory in use. Of the allocated memory "
           "39.82 GiB is allocated by PyTorch, and 4.00 GiB is reserved by PyTorch but unallocated.")
    got = {h.pattern: h.phase for h in scan_lines([oom])}
    assert got == {"cuda_oom_save": "save", "gpu_other_process": "save", "cuda_oom_fragmentation": "save"}


def test_the_completion_collators_warning_is_a_training_finding() -> None:
    # TRL's completion-only collator warns as it builds each training batch; the tokenizer's own
    # length warning comes while the data is tokenized, before training
    col = ("### Label: complaint This instance will be ignored in loss calculation. Note, if this happens often, "
           "consider increasing the `max_seq_length`.")
    assert [(h.pattern, h.phase) for h in scan_lines([col])] == [("sequence_too_long", "training")]
    tok = ("Token indices sequence length is longer than the specified maximum sequence length for this model "
           "(1034 > 512). Running this sequence through the model will result in indexing errors")
    assert [(h.pattern, h.phase) for h in scan_lines([tok])] == [("sequence_too_long", "load")]


def test_an_oom_line_with_nothing_around_it_says_its_phase_is_a_guess() -> None:
    oom = ("RuntimeError: CUDA out of memory. Tried to allocate 784.00 MiB (GPU 0; 23.70 GiB total capacity; "
           "21.25 GiB already allocated; 521.69 MiB free; 22.40 GiB reserved in total by PyTorch)")
    h = scan_lines([oom])[0]
    assert h.pattern == "cuda_oom" and h.values["phase_shown"] is False
    assert "nothing in the text shows when" in h.cause and "while loading the model instead" in h.cause
    assert "if it ran out while loading" in fixof(h)["summary"]
    # a training bar before it places it: no caveat
    placed = scan_lines([" 10%|█         | 10/100 [00:10<01:30,  1.00it/s]", oom])[0]
    assert "phase_shown" not in placed.values and "nothing in the text" not in placed.cause
    assert "while loading" not in fixof(placed)["summary"]


def test_a_toolkit_failure_while_building_an_optimizer_op_is_the_first_steps() -> None:
    # the compiler check fails as DeepSpeed JIT-builds fused_adam, named two lines later
    lines = ["CalledProcessError: Command '['which', 'c++']' returned non-zero exit status 1.", "",
             "ImportError: /root/.cache/torch_extensions/py310_cu117/fused_adam/fused_adam.so: undefined symbol: "
             "_ZN3c104cuda20CUDACachingAllocator9allocatorE"]
    assert scan_lines(lines)[0].pattern == "cuda_toolkit_env" and scan_lines(lines)[0].phase == "first_step"
    build = ["RuntimeError: Error building extension 'cpu_adam'"]
    assert [(h.pattern, h.phase) for h in scan_lines(build)] == [("cuda_toolkit_env", "first_step")]
    # a build that is not an optimizer's (or names none) stays where the pattern puts it
    assert scan_lines(["RuntimeError: Error building extension 'transformer_inference'"])[0].phase == "load"
    assert scan_lines(["OSError: CUDA_HOME environment variable is not set. Please set it"])[0].phase == "load"


# ---- session 4: families the fit corpus's misses belong to, in several wordings ------------------


@pytest.mark.parametrize(("line", "pid"), [
    # the Hub's 404 through requests/httpx on a mirror or HF_ENDPOINT host: the URL has the Hub's shape
    ("requests.exceptions.HTTPError: 404 Client Error: Not Found for url: https://hf-mirror.com/org/some-model/resolve/"
     "main/model_index.json", "hub_http_404"),
    ("httpx.HTTPStatusError: Client error '404 Not Found' for url 'https://hub.internal.example:8080/api/models/org/name/"
     "revision/main'", "hub_http_404"),
    # an availability check that names the package to install
    ("ImportError: DeepSpeed is not available => install it using `pip3 install deepspeed` or build it from source",
     "module_missing"),
    ("ImportError: Using the `Trainer` with `PyTorch` requires `accelerate>=0.20.1`: Please run `pip install "
     "transformers[torch]` or `pip install accelerate -U`", "module_missing"),
    # every label masked, raised before a zero loss is logged
    ("ZeroDivisionError: Unsloth: All labels in your dataset are -100. Training losses will be all 0.", "loss_zero"),
    # the check people paste instead of an error
    ("torch.cuda.is_available() returns False", "no_cuda"),
    # accelerate on consumer cards without P2P/IB
    ("NotImplementedError: Using RTX 4000 series doesn't support faster communication broadband via P2P or IB. Please "
     "set `NCCL_P2P_DISABLE=\"1\"` and `NCCL_IB_DISABLE=\"1\" or use `accelerate launch` which will do this "
     "automatically", "nccl_error"),
    # deprecation notices worded 'is now deprecated. You should use' / 'is deprecated. Please use'
    ("Trainer.tokenizer is now deprecated. You should use Trainer.processing_class instead.", "deprecation_info"),
    ("`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', args...)` instead.",
     "deprecation_info"),
    # datasets quoting pyarrow's error as a class, and pyarrow's own wordings without the class
    ("Failed to read file '/data/train.jsonl' with error <class 'pyarrow.lib.ArrowInvalid'>: JSON parse error: Column() "
     "changed from object to array in row 0", "data_invalid"),
    ("straddling object straddles two block boundaries (try to increase block size?)", "data_invalid"),
    # transformers 2.x's wording of newly initialized weights
    ("Weights of BertForSequenceClassification not initialized from pretrained model: ['classifier.weight', "
     "'classifier.bias']", "weights_not_initialized"),
])
def test_session4_family_wordings(line: str, pid: str) -> None:
    noise = ["{'loss': '1.234', 'grad_norm': '0.5', 'learning_rate': '0.0002', 'epoch': '0.1'}"]
    first_is([*noise, line, *noise], pid)


def test_a_hub_404_on_a_mirror_names_the_file_and_the_endpoint() -> None:
    h = scan_lines(["requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
                    "https://hf-mirror.com/org/some-model/resolve/main/model_index.json"])[0]
    assert h.values["file"] == "model_index.json" and h.values["repo_id"] == "org/some-model"
    assert h.values["endpoint"] == "https://hf-mirror.com"
    # the sentence's last '.' is not part of the file name on huggingface.co either
    h2 = scan_lines(["huggingface_hub.errors.EntryNotFoundError: 404 Client Error. Entry Not Found for url: "
                     "https://huggingface.co/Qwen/Qwen2.5-7B/resolve/main/adapter_config.json."])[0]
    assert h2.values["file"] == "adapter_config.json" and "endpoint" not in h2.values
    # a 404 from a host that is not serving Hub paths is not the Hub's
    assert not scan_lines(["requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
                           "https://example.com/files/data.zip"])


def test_a_version_gate_advises_an_upgrade_not_only_an_install() -> None:
    h = scan_lines(["ImportError: Using the `Trainer` with `PyTorch` requires `accelerate>=0.20.1`: Please run "
                    "`pip install transformers[torch]` or `pip install accelerate -U`"])[0]
    assert h.values["package"] == "accelerate" and fixof(h)["shell"] == "pip install -U accelerate"
    h = scan_lines(["ImportError: DeepSpeed is not available => install it using `pip3 install deepspeed`"])[0]
    assert h.values["package"] == "deepspeed" and fixof(h)["shell"] == "pip install deepspeed"


def test_all_labels_masked_is_an_error_about_the_markers_not_fp16() -> None:
    h = scan_lines(["ZeroDivisionError: Unsloth: All labels in your dataset are -100. Training losses will be all 0."])[0]
    assert h.pattern == "loss_zero" and h.severity == "error" and "markers" in h.cause
    assert not fixof(h)["changes"]  # not the fp16 -> bf16 switch the logged zero loss gets
    final = scan_lines(["{'train_runtime': 5.1, 'train_loss': 0.0, 'epoch': 3.0}"])[0]
    assert final.severity == "warning" and fixof(final)["changes"]


def test_a_repl_cuda_check_is_no_cuda_only_when_it_answers_false() -> None:
    got = scan_lines([">>> import torch", ">>> torch.cuda.is_available()", "False"])
    assert [h.pattern for h in got] == ["no_cuda"] and "CUDA build of torch" in fixof(got[0])["summary"]
    assert scan_lines(["In [3]: torch.cuda.is_available()", "Out[3]: False"])[0].pattern == "no_cuda"
    assert not scan_lines([">>> torch.cuda.is_available()", "True"])


def test_the_p2p_ib_refusal_names_the_two_variables() -> None:
    h = scan_lines(["NotImplementedError: Using RTX 4000 series doesn't support faster communication broadband via "
                    "P2P or IB. Please set `NCCL_P2P_DISABLE=\"1\"` and `NCCL_IB_DISABLE=\"1\"`"])[0]
    assert fixof(h)["shell"] == "export NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1"


def test_an_exception_saying_deprecated_is_not_a_note() -> None:
    lines = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>',
             "ValueError: `evaluation_strategy` is deprecated. Use `eval_strategy` instead."]
    got = scan_lines(lines)
    assert got[0].pattern == "exception" and "deprecation_info" not in ids(got)


def test_a_tied_output_head_reported_as_new_is_harmless() -> None:
    h = scan_lines(["Weights of GPT2LMHeadModel not initialized from pretrained model: ['lm_head.weight']"])[0]
    assert h.pattern == "weights_not_initialized" and h.severity == "info" and "tie" in h.cause
    other = scan_lines(["Some weights of LlamaForCausalLM were not initialized from the model checkpoint at x/y and are "
                        "newly initialized: ['model.layers.0.mlp.up_proj.weight']"])[0]
    assert other.severity == "warning" and other.values["weights"] == ["model.layers.0.mlp.up_proj.weight"]


def test_a_message_wrapped_just_before_a_space_is_found() -> None:
    # the terminal cut falls before a space: the continuation starts with that one space
    lines = ["NotImplementedError: Using RTX 4000 series doesn't support faster communication broadband via P2P or",
             " IB. Please set `NCCL_P2P_DISABLE=\"1\"` and `NCCL_IB_DISABLE=\"1\"`"]
    assert scan_lines(lines)[0].pattern == "nccl_error"
    # a frame's indented source line under a long line is not a continuation
    assert not scan_lines(["x" * 70 + " is available via P2P or", "    IB = 1"])


def test_a_rich_traceback_cut_before_its_error_says_so_with_its_frames() -> None:
    # rich's box wraps a long path: the line number's rest and the function are on the next box line
    lines = ["│ /home/u/envs/llm/lib/python3.9/site-packages/transformers/trainer.py:283                            │",
             "│ 0 in save_model                                                                                  │",
             "│                                                                                                  │",
             "│ ❱ 2830 │   │   │   self._save(output_dir)                                                        │"]
    h = scan_lines(lines)[0]
    assert h.pattern == "log_cut_in_traceback" and h.phase == "save"
    assert h.values["last_frame"].endswith("trainer.py:2830 in save_model")
    # a box line whose path itself wrapped still reads as a frame
    lines = ["│ /home/u/anaconda3/envs/some_long_environment_name/lib/py                                        │",
             "│ thon3.9/site-packages/torch/nn/functional.py:2238 in embedding                                  │",
             "│ ❱ 2238 │   return torch.embedding(weight, input, padding_idx, scale_grad_by_                        │"]
    assert scan_lines(lines)[0].pattern == "log_cut_in_traceback"


def test_deepspeeds_launcher_killing_its_ranks_is_a_report_not_a_cause() -> None:
    lines = ["10.0.0.2: /x/site-packages/transformers/optimization.py:411: FutureWarning: This implementation of AdamW "
             "is deprecated and will be removed in a future version.",
             "10.0.0.2: [2023-08-31 11:58:27,249] [INFO] [launch.py:315:sigkill_handler] Killing subprocess 1612505",
             "10.0.0.2: [2023-08-31 11:58:27,565] [INFO] [launch.py:315:sigkill_handler] Killing subprocess 1612506"]
    got = scan_lines(lines)
    assert got[0].pattern == "ranks_failed" and got[0].values["root_error_in_log"] is False
    assert [h.pattern for h in got[1:]] == ["deprecation_info"]  # the note ranks after the report
    # with a rank's error above it, that error is the finding
    oom = "10.0.0.2: torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB (GPU 3; 39.4 GiB total)"
    assert scan_lines([oom, *lines])[0].pattern != "ranks_failed"


# Issue 21's families in the wordings of other threads and versions (quoted lines from public issue
# threads outside tests/data/reallogs, paths shortened): each must be the first finding.
@pytest.mark.parametrize(("line", "pid"), [
    # compiler / toolkit: Windows' nvcc.exe, setuptools unable to start nvcc, ninja's JIT build, torch's g++ check
    (r"error: command 'C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA\v10.0\bin\nvcc.exe' failed with exit status 2",
     "cuda_toolkit_env"),
    ("error command “/usr/bin/nvcc” failed with exit status1", "cuda_toolkit_env"),
    ("unable to execute ':/usr/local/cuda-9.0:/usr/local/cuda-9.0/bin/nvcc': No such file or directory", "cuda_toolkit_env"),
    ("subprocess.CalledProcessError: Command '['ninja', '-v']' returned non-zero exit status 1.", "cuda_toolkit_env"),
    ("RuntimeError: The current installed version of g++ (4.8.5) is less than the minimum required version by CUDA 11.8 "
     "(6.0.0). Please make sure to use an adequate version of g++ (>=6.0.0, <12.0).", "cuda_toolkit_env"),
    # ABI: xformers' own bundled flash-attn build is xformers' to reinstall
    ("ImportError: /x/site-packages/xformers/flash_attn_3/_C.so: undefined symbol: _ZN3c105ErrorC2ENS_14SourceLocationE",
     "extension_abi"),
    # Windows DLLs
    ('OSError: [WinError 126] The specified module could not be found. Error loading "C:\\venv\\lib\\site-packages\\torch'
     '\\lib\\c10.dll" or one of its dependencies.', "shared_lib_missing"),
    # hf_xet's download into the Hub cache
    ("RuntimeError: Data processing error: CAS service error : IO Error: No space left on device (os error 28)",
     "cache_disk_full"),
    ("[WARNING|logging.py:328] 2024-06-01 >> `torch_dtype` is deprecated! Use `dtype` instead!", "deprecation_info"),
    # the final loss as the Trainer's return value and as wandb's run summary
    ("TrainOutput(global_step=100, training_loss=0.0, metrics={'train_runtime': 10.0})", "loss_zero"),
    ("wandb:         train/loss 0.0", "loss_zero"),
])
def test_issue21_families_in_other_threads_wordings(line: str, pid: str) -> None:
    first_is([line], pid)


def test_family_fixes_fit_the_wording() -> None:
    xf = scan_lines(["ImportError: /x/site-packages/xformers/flash_attn_3/_C.so: undefined symbol: _ZN3c105ErrorC2E"])[0]
    assert "xformers" in fixof(xf)["shell"]  # not flash-attn's wheel
    dll = scan_lines(['OSError: [WinError 126] The specified module could not be found. Error loading "C:\\v\\torch'
                      '\\lib\\c10.dll" or one of its dependencies.'])[0]
    assert dll.values["library"] == "c10.dll" and "Visual C++ Redistributable" in fixof(dll)["summary"]
    assert fixof(dll)["shell"] is None  # no Linux ldconfig advice for a Windows DLL
    assert not scan_lines(["wandb:         train/loss 0.0123"])  # a small loss is not zero


def test_hub_404_urls_name_what_is_missing() -> None:
    url = "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: https://huggingface.co/"
    # a model id with a lost '/': the API path's 'revision' is not part of the id
    h = scan_lines([url + "api/models/facebookav2vec2-base/revision/main"])[0]
    assert h.values["repo_id"] == "facebookav2vec2-base" and "id is wrong" in h.cause
    # a local folder that does not exist goes to the Hub as an owner-less id: its config.json 404s
    h = scan_lines([url + "model_epoch40_50w/resolve/main/config.json"])[0]
    assert h.values["repo_id"] == "model_epoch40_50w" and "not a folder here" in h.cause
    assert fixof(h)["changes"] == [{"key": "base_model_name", "to": "an existing model id or local path"}]
    # an owner-less legacy id missing an optional file is not called a wrong path
    h = scan_lines([url + "gpt2/resolve/main/adapter_config.json"])[0]
    assert "not a folder here" not in h.cause


def test_an_ipython_oom_header_reads_the_cell_and_frames_after_it() -> None:
    # IPython prints 'OutOfMemoryError  Traceback' first: the cell's trainer.train() and Colab's frames
    # ('path.py in f(args)', no line number) follow, and no step had finished
    lines = ["OutOfMemoryError                          Traceback (most recent call last)",
             "/tmp/ipykernel_36/773422404.py in <cell line: 0>()",
             "----> 1 trainer_stats = trainer.train()", "",
             "[/usr/local/lib/python3.10/dist-packages/accelerate/utils/operations.py](https://localhost:8080/#) in "
             "_convert_to_fp32(tensor)",
             "OutOfMemoryError: CUDA out of memory. Tried to allocate 9.47 GiB. GPU 0 has a total capacity of 14.75 GiB"]
    h = scan_lines(lines)[0]
    assert h.pattern == "cuda_oom" and h.phase == "first_step" and "phase_shown" not in h.values
    assert h.values["raised_in"].endswith("in _convert_to_fp32")


def test_a_failure_at_pythons_prompt_or_with_the_capability_message_is_a_setup_phase() -> None:
    repl = [">>> x != 0", "Traceback (most recent call last):", '  File "<stdin>", line 1, in <module>',
            "RuntimeError: CUDA error: no kernel image is available for execution on the device"]
    assert [(h.pattern, h.phase) for h in scan_lines(repl)][0] == ("no_kernel_image", "load")
    cap = ["RuntimeError: CUDA error: no kernel image is available for execution on the device", "",
           "NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation."]
    assert scan_lines(cap)[0].phase == "load"
    # without either, a failing kernel is still the first step's
    assert scan_lines(cap[:1])[0].phase == "first_step"


def test_a_message_hard_wrapped_mid_word_is_found_in_short_and_long_pastes() -> None:
    msg = ("[2021-07-15 17:02:39,984] [INFO] [stage3.py:2725:_overflow_clean_up] [deepscale] OVERFLOW! Rank 0 Skipping "
           "step. Attempted loss scale: 64.0, reducing to 32.0")
    cut = [msg[i : i + 100] for i in range(0, len(msg), 100)]  # neither half holds the pattern whole
    assert not scan_lines(cut[:1]) and not scan_lines(cut[1:])
    assert scan_lines(cut)[0].pattern == "zero_stage_numeric"
    # anywhere in a pasted excerpt's length, with long lines around it
    filler = [("x" * 40 + f" step {i} " + "y" * 60)[:100] for i in range(300)]
    assert sum(len(x) + 1 for x in filler) < logdiag.WRAP_HEAD
    assert scan_lines([*filler, *cut, *filler])[0].pattern == "zero_stage_numeric"


def test_oom_numbers_of_a_message_wrapped_mid_word() -> None:
    msg = ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 982.00 MiB. GPU 3 has a total capacity "
           "of 44.47 GiB of which 260.38 MiB is free. Process 100842 has 44.05 GiB memory in use. Including non-PyTorch "
           "memory, this process has 164.00 MiB memory in use. Of the allocated memory 4.50 KiB is allocated by "
           "PyTorch, and 1.50 MiB is reserved by PyTorch but unallocated.")
    got = {h.pattern: h for h in scan_lines([msg[i : i + 100] for i in range(0, len(msg), 100)])}
    assert got["cuda_oom"].values["gpu"] == 3 and "gpu_other_process" in got


@pytest.mark.parametrize(("line", "pid"), [
    # bitsandbytes' C functions are all c-prefixed; any of them missing is the native library missing
    ("AttributeError: 'NoneType' object has no attribute 'cget_col_row_stats'", "bnb_native_missing"),
    ("AttributeError: 'NoneType' object has no attribute 'cadam32bit_grad_fp32'", "bnb_native_missing"),
    ("RuntimeError: mat1 and mat2 must have the same dtype, but got Float and BFloat16", "dtype_mismatch"),
    ("ValueError: Target module Qwen2ForCausalLM() is not supported. Currently, only the following modules are "
     "supported: `torch.nn.Linear`, `torch.nn.Embedding`.", "lora_target_modules"),
    ("ValueError: Can't find 'adapter_config.json' at 'out/checkpoint-100'", "file_not_found"),
    ("Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check by verifying that you don't "
     "receive any warning while reloading", "shared_tensors_save"),
    ("ValueError: `.to` is not supported for `8-bit` models. Please use the model as it is", "quantized_moved"),
    ("RuntimeError: probability tensor contains either inf, nan or element < 0", "generation_nan"),
    ("ValueError: Trying to set a tensor of shape torch.Size([32000, 4096]) in \"weight\" (which has shape "
     "torch.Size([32001, 4096])), this look incorrect.", "weights_shape_mismatch"),
])
def test_common_fine_tune_failures_in_their_wordings(line: str, pid: str) -> None:
    first_is([line], pid)


def test_new_families_say_what_fits_their_case() -> None:
    assert not scan_lines(["AttributeError: 'NoneType' object has no attribute 'config'"])  # not bitsandbytes'
    note = scan_lines(["Removed shared tensor {'lm_head.weight'} while saving. This should be OK"])[0]
    assert note.severity == "info" and note.phase == "save"
    own = scan_lines(["model.to('cuda')", "ValueError: `.to` is not supported for `4-bit` or `8-bit` bitsandbytes models."])[0]
    assert "drop the .to" in fixof(own)["summary"]
    disp = scan_file(LOGS / "quantized_moved__dispatch_model.log")[0]
    assert fixof(disp)["shell"] == "pip install -U transformers accelerate"  # from_pretrained moved it, not the user
    vocab = scan_file(LOGS / "weights_shape_mismatch__t5_vocab.log")[0]
    assert vocab.values["vocab_sizes"] == ["32101", "32128"] and "vocabulary" in vocab.cause
    other = scan_file(LOGS / "weights_shape_mismatch__adapter_other_base.log")[0]
    assert "vocab_sizes" not in other.values
    assert scan_lines(["RuntimeError: probability tensor contains either `inf`, `nan` or element < 0"])[0].phase == "generation"


@pytest.mark.parametrize("prefix", ["2024-05-01 12:00:07,123 - INFO - ", "2024-05-01T12:00:07.123456Z ",
                                    "Aug 12 10:38:34 gpu-node-1 python[4073658]: ", "10.0.0.2: ", "[1,0]<stderr>:", "> "])
def test_lines_prefixed_by_a_tool_read_as_the_lines_themselves(prefix: str) -> None:
    tb = ["Traceback (most recent call last):",
          '  File "/x/site-packages/transformers/models/auto/configuration_auto.py", line 1034, in from_pretrained',
          "    config_class = CONFIG_MAPPING[config_dict[\"model_type\"]]",
          "KeyError: 'qwen2'"]
    got = scan_lines([prefix + ln for ln in tb])
    assert got and got[0].pattern == "transformers_too_old", [h.pattern for h in got]  # read from the frames
    repl = scan_lines([prefix + ">>> torch.cuda.is_available()", prefix + "False"])
    assert repl and repl[0].pattern == "no_cuda"
    assert scan_lines([prefix + "  train_loss               =        0.0"])[0].pattern == "loss_zero"


def test_a_prompt_or_an_exception_is_not_taken_for_a_prefix() -> None:
    assert logdiag._split_rank(">>> x = 1") == ("", ">>> x = 1")
    assert logdiag._split_rank("ValueError: 10.0.0.2: bad") == ("", "ValueError: 10.0.0.2: bad")
    assert logdiag._split_rank("2024-05-01 12:00:07 [rank3]: OSError: x") == ("3", "OSError: x")


def test_a_log_copied_with_no_break_spaces_keeps_its_traceback() -> None:
    # a web page or a chat turns runs of spaces into no-break spaces: IPython's header still names the OOM
    nb = "\u00a0 "
    lines = ["OutOfMemoryError" + nb * 13 + "Traceback (most recent call last)", "Cell In[9], line 22",
             "---> 22 trainer.train()", "",
             "File ~/x/site-packages/transformers/trainer.py:1633, in Trainer.train(self)"]
    got = scan_lines(lines)
    assert got and got[0].pattern == "cuda_oom", [h.pattern for h in got]
    assert logdiag._clean("\u00a0\u00a0File x".encode()) == "  File x"


@pytest.mark.parametrize(("line", "pid"), [
    ("RuntimeError: Error compiling objects for extension", "cuda_toolkit_env"),
    ("RuntimeError: FlashAttention is only supported on CUDA 11.6 and above.  Note: make sure nvcc has a supported "
     "version by running nvcc -V.", "cuda_toolkit_env"),
    ('error: Microsoft Visual C++ 14.0 or greater is required. Get it with "Microsoft C++ Build Tools"', "cuda_toolkit_env"),
    ("ERROR: Failed building wheel for flash-attn", "cuda_toolkit_env"),
    ("Could not load library cudnn_cnn_infer64_8.dll. Error code 126", "shared_lib_missing"),
    ("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0 as it may crash.", "extension_abi"),
    ("RuntimeError: module compiled against API version 0x10 but this version of numpy is 0xf", "extension_abi"),
])
def test_build_and_abi_failures_in_more_wordings(line: str, pid: str) -> None:
    first_is([line], pid)


def test_build_failures_get_the_fix_of_their_kind() -> None:
    msvc = scan_lines(['error: Microsoft Visual C++ 14.0 or greater is required. Get it with "Microsoft C++ Build Tools"'])[0]
    assert "Build Tools" in fixof(msvc)["summary"] and fixof(msvc)["shell"] is None  # no CUDA_HOME on this one
    wheel = scan_lines(["ERROR: Failed building wheel for flash-attn"])[0]
    assert wheel.values["package"] == "flash-attn" and "prebuilt flash-attn wheel" in fixof(wheel)["summary"]
    numpy = scan_lines(["A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0 as it may crash."])[0]
    assert fixof(numpy)["shell"] == "pip install 'numpy<2'"
    # a wheel that is not a compiled CUDA extension's is not a toolkit problem
    assert not scan_lines(["ERROR: Failed building wheel for pyyaml"])


def test_an_argument_a_library_class_no_longer_takes_names_the_library_and_the_new_name() -> None:
    tb = ["Traceback (most recent call last):", '  File "/home/u/train.py", line 40, in <module>', "    trainer = SFTTrainer(",
          "TypeError: SFTTrainer.__init__() got an unexpected keyword argument 'tokenizer'"]
    h = scan_lines(tb)[0]
    assert h.pattern == "library_api_changed" and "installed trl" in h.cause
    assert "processing_class" in fixof(h)["summary"] and fixof(h)["shell"] is None  # not 'upgrade': it may be too new
    args = [*tb[:3], "TypeError: TrainingArguments.__init__() got an unexpected keyword argument 'evaluation_strategy'"]
    assert "eval_strategy" in fixof(scan_lines(args)[0])["summary"]
    # a class fmllm does not know keeps the generic advice
    other = [*tb[:3], "TypeError: Foo.__init__() got an unexpected keyword argument 'bar'"]
    assert "that is where it failed" in fixof(scan_lines(other)[0])["summary"]


def test_every_line_a_pattern_matches_holds_one_of_its_needles() -> None:
    # lognoise folds a TUI log's lines with the patterns' needles as a cheap test before the regex: a
    # wording added to a regex without its needle would be shown as plain output there
    real = Path(__file__).parent / "data" / "reallogs"
    fit = [p.with_suffix(".log") for p in sorted(real.glob("c[123]_*.json"))  # the held-out batch is never read
           if json.loads(p.read_text(encoding="utf-8")).get("split") == "fit"]
    stale = set()
    for path in [*ALL_LOGS, *fit]:
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = logdiag._split_rank(logdiag._clean(raw.encode()))[1]
            for p in PATTERNS:
                if p.rx is not None and p.needles and p.rx.search(line) and not any(n in line for n in p.needles):
                    stale.add((p.id, line[:80]))
    assert not stale, sorted(stale)[:10]


def test_more_install_gates_and_the_flash_attention_padding_refusal() -> None:
    sp = scan_lines(["ValueError: Cannot instantiate this tokenizer from a slow version. If it's based on sentencepiece, "
                     "make sure you have sentencepiece installed."])[0]
    assert sp.pattern == "module_missing" and fixof(sp)["shell"] == "pip install sentencepiece"
    acc = scan_lines(["ImportError: Using `low_cpu_mem_usage=True` or a `device_map` requires Accelerate: "
                      "`pip install 'accelerate>=0.26.0'`"])[0]
    assert acc.pattern == "module_missing" and fixof(acc)["shell"] == "pip install -U accelerate"
    pad = scan_lines(["ValueError: You are attempting to perform batched generation with padding_side='right' this may "
                      "lead to unexpected behaviour for Flash Attention version of Qwen2."])[0]
    assert (pad.pattern, pad.severity, pad.phase) == ("padding_side_right", "error", "generation")


def test_the_quantization_gate_naming_accelerate_is_reported_once() -> None:
    got = scan_file(LOGS / "bnb_not_installed__accelerate_8bit.log")
    assert [h.pattern for h in got] == ["bnb_not_installed"]  # not also module_missing for the same line


def test_an_api_changed_between_versions_is_its_own_cause_in_other_threads_wordings() -> None:
    # library_api_changed: wordings of other threads (transformers#7974 on Python < 3.10, Whisper-Finetune#112,
    # trl#2291, transformers#19011, setfit's pytest output) and an import a version lacks
    old_py = scan_lines(["TypeError: __init__() got an unexpected keyword argument 'evaluation_strategy'"])[0]
    assert old_py.pattern == "library_api_changed" and "eval_strategy" in fixof(old_py)["summary"]
    s2s = scan_lines(["TypeError: Seq2SeqTrainingArguments.__init__() got an unexpected keyword argument 'evaluation_strategy'"])[0]
    assert s2s.pattern == "library_api_changed" and s2s.values["library"] == "transformers"
    for line in ["AttributeError: 'TrainingArguments' object has no attribute 'model_init_kwargs'",
                 "AttributeError: 'TrainingArguments' object has no attribute 'main_process_first'"]:
        assert scan_lines([line])[0].pattern == "library_api_changed", line
    pytest_e = scan_lines(["E       AttributeError: 'TrainingArguments' object has no attribute 'eval_strategy'"])[0]
    assert pytest_e.pattern == "library_api_changed" and "newer name of 'evaluation_strategy'" in pytest_e.cause
    imp = scan_lines(["ImportError: cannot import name 'SFTConfig' from 'trl' (/usr/local/lib/python3.10/dist-packages/trl/__init__.py)"])[0]
    assert imp.pattern == "library_api_changed" and fixof(imp)["shell"] == "pip install -U trl"
    # a method of transformers' PEFT integration, no traceback around it (TamilLLaMA#7's paste)
    mixin = scan_lines(["TypeError: PeftAdapterMixin.load_adapter() got an unexpected keyword argument 'is_trainable'"])[0]
    assert mixin.pattern == "library_api_changed" and mixin.values["library"] == "transformers"
    # not an API change: a None where an object was expected, an unknown class, a circular import
    assert not scan_lines(["AttributeError: 'NoneType' object has no attribute 'config'"])
    assert not scan_lines(["TypeError: Foo.__init__() got an unexpected keyword argument 'bar'"])
    assert not scan_lines(["ImportError: cannot import name 'x' from partially initialized module 'trl' (most likely due to a circular import)"])
    # bitsandbytes' missing class stays its own, more telling cause
    assert first_of(["AttributeError: module 'bitsandbytes.nn' has no attribute 'Linear4bit'"]) == "bnb_not_installed"


def first_of(lines: list[str]) -> str:
    return scan_lines(lines)[0].pattern


def test_pushing_without_a_write_token_in_other_threads_wordings() -> None:
    # autotrain's CLI check, huggingface_hub's missing token, a 403 on repo creation (deep-rl-class#508, OpenCodeInterpreter#13)
    no_token = scan_lines(["ValueError: Token must be specified for push to hub"])[0]
    assert no_token.pattern == "hub_auth_invalid" and "none was given" in no_token.cause
    hfh = scan_lines(["huggingface_hub.errors.LocalTokenNotFoundError: Token is required (`token=True`), but no token found. "
                      "You need to provide a token or be logged in to Hugging Face with `huggingface-cli login` or "
                      "`huggingface_hub.login`. See https://huggingface.co/settings/tokens."])[0]
    assert hfh.pattern == "hub_auth_invalid" and fixof(hfh)["shell"] == "hf auth login"
    ns = scan_lines(["HfHubHTTPError: 403 Client Error: Forbidden for url: https://huggingface.co/api/repos/create (Request ID: x)",
                     "", 'You don\'t have the rights to create a model under the namespace "DaveBostain"'])[0]
    assert ns.pattern == "hub_auth_invalid" and "write access" in fixof(ns)["summary"]


def test_tf32_on_a_pre_ampere_gpu_turns_tf32_off() -> None:
    # percent4/embedding_model_exp#3 (a T4): TrainingArguments' check, raised through sentence-transformers
    h = scan_lines(['  File "/root/miniconda3/envs/e/lib/python3.9/site-packages/transformers/training_args.py", line 1771, '
                    'in __post_init__', '    raise ValueError("--tf32 requires Ampere or a newer GPU arch, cuda>=11 and torch>=1.7")',
                    "ValueError: --tf32 requires Ampere or a newer GPU arch, cuda>=11 and torch>=1.7"])[0]
    assert h.pattern == "bf16_unsupported" and ("training.tf32", False) in [(c.key, c.to) for c in h.fix.changes]


def test_a_pad_token_read_before_it_is_set_is_a_warning_below_the_error_the_run_ended_on() -> None:
    # transformers logs it whenever code reads a missing pad token (qlora#63: harmless when the script sets one next)
    alone = scan_lines(["Using pad_token, but it is not set yet."])[0]
    assert (alone.pattern, alone.severity) == ("pad_token_missing", "warning")
    got = scan_lines(["Using pad_token, but it is not set yet.",
                      "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                      "of 23.65 GiB of which 1.02 GiB is free."])
    assert got[0].pattern == "cuda_oom"


def test_records_without_the_fields_the_loader_maps_are_a_data_format_mismatch() -> None:
    # datasets' rename/remove in LlamaFactory#1312, AnnotatedTransformer#3, prompt2model#291; xTuring's loader
    for line in ["ValueError: Original column name instruction not in the dataset. Current columns in the dataset: ['text', 'meta']",
                 "ValueError: Original column names {'1', '0'} not in the dataset. Current columns in the dataset: ['text']",
                 "ValueError: Column name input_col not in the dataset. Current columns in the dataset: []",
                 "ValueError: The jsonl file should have keys text, instruction and target"]:
        h = scan_lines([line])[0]
        assert h.pattern == "data_invalid" and "fields" in h.cause, line
        assert ("data_format", "match the data") in [(c.key, c.to) for c in h.fix.changes]


def test_a_cause_read_only_on_a_line_before_the_exception_ranks_after_that_exception() -> None:
    # bitsandbytes' import-time warning (its cextension.py wording) is printed in many runs that then fail on
    # something else: read on no error line, it is weaker evidence than the exception that ended the run
    tb = ["Traceback (most recent call last):", '  File "/home/u/prep.py", line 21, in format_example',
          '    return ex["response"]', "KeyError: 'response'"]
    warn = ("/usr/local/lib/python3.10/dist-packages/bitsandbytes/cextension.py:34: UserWarning: The installed version of "
            "bitsandbytes was compiled without GPU support. 8-bit optimizers, 8-bit multiplication, and GPU quantization "
            "are unavailable.")
    got = [h.pattern for h in scan_lines([warn, *tb])]
    assert got[:2] == ["exception", "bnb_setup"], got
    # the same cause read on the exception line, or on a native error line, keeps its place
    native = ["Error no kernel image is available for execution on the device at line 167 in file /src/csrc/ops.cu", *tb]
    assert first_of(native) == "no_kernel_image"
    assert first_of([warn, "AttributeError: 'NoneType' object has no attribute 'cget_col_row_stats'"]) in ("bnb_setup", "bnb_native_missing")
    # transformers' refusal cut before 'trust_remote_code' by a paste (Phi3-Vision-Finetune#22's shape, older wording)
    cut = ["ValueError: Loading this model requires you to execute custom code contained in the model repository on your local m"]
    assert first_of(cut) == "trust_remote_code"
    old = ["ValueError: Loading THUDM/chatglm-6b requires you to execute the configuration file in that repo on your local machine."]
    assert first_of(old) == "trust_remote_code"


def test_a_deprecation_wrapper_between_the_script_and_the_class_is_not_the_caller() -> None:
    # huggingface_hub's / transformers' deprecation decorators forward the script's own keyword arguments
    # (DistillKit#10's frames): the script passed the argument the installed trl moved into SFTConfig
    tb = ["Traceback (most recent call last):", '  File "/home/jupyter/DistillKit/distil_logits.py", line 171, in <module>',
          "    trainer = LogitsTrainer(",
          '  File "/opt/conda/lib/python3.10/site-packages/huggingface_hub/utils/_deprecation.py", line 101, in inner_f',
          "    return f(*args, **kwargs)",
          "TypeError: SFTTrainer.__init__() got an unexpected keyword argument 'dataset_text_field'"]
    h = scan_lines(tb)[0]
    assert h.pattern == "library_api_changed" and "SFTConfig(dataset_text_field" in fixof(h)["summary"]
    assert fixof(h)["shell"] is None  # not 'upgrade huggingface_hub'
    # dspy#8762's wording: SFTConfig itself no longer takes max_seq_length
    cfg = scan_lines(["TypeError: SFTConfig.__init__() got an unexpected keyword argument 'max_seq_length'"])[0]
    assert cfg.values["library"] == "trl" and "max_length" in fixof(cfg)["summary"]


def test_a_class_name_inside_another_familys_message_does_not_name_that_family() -> None:
    # huggingface_hub's LocalEntryNotFoundError (offline mode, or a cache miss with no connection) is not a 404:
    # 'EntryNotFoundError' inside its name matched hub_http_404 and ranked it first
    for line in ["huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache and "
                 "outgoing traffic has been disabled. To enable hf.co look-ups and downloads online, set 'local_files_only' to False.",
                 "huggingface_hub.utils._errors.LocalEntryNotFoundError: An error happened while trying to locate the file on "
                 "the Hub and we cannot find the requested files in the local cache. Please check your connection and try again."]:
        assert [h.pattern for h in scan_lines([line])] == ["hub_unreachable"], line
    assert first_of(["huggingface_hub.utils._errors.EntryNotFoundError: 404 Client Error. (Request ID: x)"]) == "hub_http_404"
    # torch >= 2.5 raises torch.OutOfMemoryError on Apple's MPS too: the class alone does not make it CUDA's
    mps = ["torch.OutOfMemoryError: MPS backend out of memory (MPS allocated: 18.04 GB, other allocations: 384.00 KB, "
           "max allowed: 18.13 GB). Tried to allocate 1.00 GB on private pool."]
    assert [h.pattern for h in scan_lines(mps)] == ["mps_oom"]
    assert first_of(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."]) == "cuda_oom"


def test_a_json_error_pasted_without_its_class_is_still_the_data() -> None:
    # Python json's messages with the class cut off by the paste; the parser's position is kept
    for line in ["Expecting value: line 1 column 1 (char 0)",
                 "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
                 "Expecting ',' delimiter: line 3 column 45 (char 120)"]:
        h = scan_lines([line])[0]
        assert h.pattern == "data_invalid" and h.values.get("line"), line
    # the source line that raises it is not the message
    assert not scan_lines(['    raise JSONDecodeError("Expecting value", s, err.value) from None'])


def test_a_missing_name_in_the_scripts_own_module_is_not_advised_as_a_library_upgrade() -> None:
    # Anima-Standalone-Trainer#2 and THUDM/grb#4: a name missing from the project's own package ('library',
    # 'grb.utils'); the old fallback advised 'pip install -U library' from the module's name
    anima = ["Traceback (most recent call last):",
             '  File "D:\\\\Anima-Standalone-Trainer\\\\library\\\\train_util.py", line 63, in <module>',
             "    from library import custom_train_functions, sd3_utils",
             "ImportError: cannot import name 'sd3_utils' from 'library' (D:\\\\Anima-Standalone-Trainer\\\\library\\\\__init__.py)"]
    grb = ["Traceback (most recent call last):",
           '  File "/nfs/homedirs/geisler/code/grb/pipeline/train_pipeline.py", line 8, in <module>',
           "    from grb.utils import Trainer, Logger",
           "ImportError: cannot import name 'Trainer' from 'grb.utils' (/nfs/homedirs/geisler/code/grb/grb/utils/__init__.py)"]
    for tb in (anima, grb):
        h = scan_lines(tb)[0]
        assert h.pattern == "exception" and fixof(h)["shell"] is None and "where it failed" in fixof(h)["summary"]
    # a None where an object was expected, inside a library's frame, is not a version mismatch either
    none = ["Traceback (most recent call last):", '  File "/home/u/train.py", line 9, in <module>', "    trainer.train()",
            '  File "/usr/lib/python3.10/site-packages/transformers/trainer.py", line 1500, in train',
            "AttributeError: 'NoneType' object has no attribute 'config'"]
    assert fixof(scan_lines(none)[0])["shell"] is None


# ---- issue 21 round 3: c5's misleading first hits, as rules for their families -----------------------------------
_MODEL_TYPE_MSG = ("ValueError: The checkpoint you are trying to load has model type `{}` but Transformers does not "
                   "recognize this architecture. This could be because of an issue with the checkpoint, or because your "
                   "version of Transformers is out of date.")


def test_a_model_type_no_transformers_release_knows_is_the_projects_own_not_an_old_transformers() -> None:
    # TinyLLaVA_Factory#174 (tinyllava), Emma-X#1 (openvla), GOT-OCR2.0#161 (GOT): a project's own model_type;
    # upgrading transformers (the old first finding) cannot load it
    for mtype in ("tinyllava", "openvla", "GOT"):
        h = scan_lines([_MODEL_TYPE_MSG.format(mtype)])[0]
        assert h.pattern == "custom_model_type_unregistered", mtype
        assert h.values["model_type"] == mtype.lower() and "register" in fixof(h)["summary"]
    # transformers#32107 (chameleon on 4.42), ComfyUI-QwenVL#23 (qwen3_vl), ComfyUI_ExtraModels#114 (gemma2):
    # released architectures stay 'upgrade transformers'
    for mtype in ("chameleon", "qwen3_vl", "gemma2"):
        assert first_of([_MODEL_TYPE_MSG.format(mtype)]) == "transformers_too_old", mtype
    # wrapped at a terminal's width after the type, the start of the message still decides
    assert first_of(_MODEL_TYPE_MSG.format("tinyllava")[:100].splitlines() + [_MODEL_TYPE_MSG.format("x")[100:]]) \
        == "custom_model_type_unregistered"


def test_a_keyerror_in_config_mapping_reads_the_model_type_the_same_way() -> None:
    # Hunyuan-7B#3: CONFIG_MAPPING[model_type] raising KeyError (older transformers print only that)
    def tb(mtype: str) -> list[str]:
        return ["Traceback (most recent call last):",
                '  File "/usr/local/lib/python3.11/dist-packages/transformers/models/auto/configuration_auto.py", line 1265, in from_pretrained',
                '    config_class = CONFIG_MAPPING[config_dict["model_type"]]',
                f"KeyError: '{mtype}'"]
    assert first_of(tb("hunyuan_v1_dense")) == "transformers_too_old"
    h = scan_lines(tb("llava_pythia_custom"))[0]
    assert h.pattern == "custom_model_type_unregistered" and h.values["model_type"] == "llava_pythia_custom"


def test_released_model_types_are_read_without_importing_transformers() -> None:
    import subprocess
    code = ("import sys; from fmllm_tui import logpatterns as lp; t = lp.released_model_types(); "
            "assert 'llama' in t and 'qwen2' in t; assert 'transformers' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_deepspeed_config_values_that_disagree_with_the_trainer_are_their_own_cause() -> None:
    # MedicalGPT#191 (fp16), hendrycks/apps#9 (batch, lr, scheduler): transformers names the keys to set to auto
    medical = ["  File \"/home/u/lib/python3.10/site-packages/transformers/deepspeed.py\", line 220, in trainer_config_finalize",
               "    raise ValueError(",
               "ValueError: Please correct the following DeepSpeed config values that mismatch TrainingArguments values:",
               "- ds fp16.enabled=True vs hf fp16|fp16_full_eval+fp16_backend(amp)=False",
               "The easiest method is to set these DeepSpeed config values to 'auto'."]
    h = scan_lines(medical)[0]
    assert h.pattern == "ds_config_mismatch" and h.values["ds_keys"] == ["fp16.enabled"]
    assert "fp16.enabled" in fixof(h)["summary"] and "auto" in fixof(h)["summary"]
    # DeepSpeed's own assertion (LlamaFactory#2574 under mpirun; starcoder#77 in a rich box that wrapped it)
    first_is(["AssertionError: Check batch related parameters. train_batch_size is not equal to micro_batch_per_gpu * "
              "gradient_acc_step * world_size 16 != 1 * 1 * 1"], "ds_config_mismatch")
    first_is(["AssertionError: Check batch related parameters. train_batch_size is not",
              "equal to micro_batch_per_gpu * gradient_acc_step * world_size 64 != 4 *", "8 * 1"], "ds_config_mismatch")


def test_accelerates_own_port_check_is_port_in_use() -> None:
    # accelerate#2955, thinking-in-space#22: accelerate refuses before torch's socket error
    first_is(["ConnectionError: Tried to launch distributed communication on port `29144`, but another process is "
              "utilizing it. Please specify a different port (such as using the `--main_process_port` flag or specifying "
              "a different `main_process_port` in your config file) and rerun your script."], "port_in_use")


def test_a_hub_401_on_a_file_is_a_repo_that_does_not_exist_unless_it_says_gated() -> None:
    hf_frames = ["Traceback (most recent call last):",
                 '  File "/opt/lib/python3.11/site-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status',
                 "    response.raise_for_status()",
                 '  File "/opt/lib/python3.11/site-packages/requests/models.py", line 1024, in raise_for_status',
                 "    raise HTTPError(http_error_msg, response=self)"]
    # open-webui#4773 ('sentence-transformers/ollama'), MA-LMM#9 ('llm/vicuna-7b', IPython): no such repo
    first_is(hf_frames + ["requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: "
                          "https://huggingface.co/sentence-transformers/ollama/resolve/main/config.json"], "hub_not_found")
    first_is(["HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/llm/vicuna-7b/resolve/main/"
              "tokenizer_config.json"], "hub_not_found")
    # the paste cut the URL: huggingface_hub's status check in the frames says it was the Hub
    first_is(hf_frames + ["requests.exceptions.HTTPError: 401 Client Error: Unauthorized"], "hub_not_found")
    # the same 401 from another service is not the Hub's
    other = ["Traceback (most recent call last):", '  File "/app/client.py", line 40, in call',
             "    r.raise_for_status()", "requests.exceptions.HTTPError: 401 Client Error: Unauthorized"]
    assert "hub_not_found" not in ids(scan_lines(other))
    # a 401 whose chained exception says the repo is gated is hub_gated's alone
    gated = hf_frames + ["requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: "
                         "https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json", "",
                         "The above exception was the direct cause of the following exception:", "",
                         "Traceback (most recent call last):",
                         '  File "/opt/lib/python3.11/site-packages/huggingface_hub/file_download.py", line 1374, in hf_hub_download',
                         "huggingface_hub.utils._errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-65a1)",
                         "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json."]
    got = scan_lines(gated)
    assert got[0].pattern == "hub_gated" and "hub_not_found" not in ids(got)


def test_a_keyerror_on_a_dataset_row_is_a_missing_column() -> None:
    # a row's column lookup in datasets' formatting: the data has no such column. Under TRL's SFTTrainer
    # (LLaMA-Factory/trl threads: KeyError 'text' with a dataset of prompt/response fields) it is the text field
    row = ['  File "/env/lib/python3.11/site-packages/datasets/formatting/formatting.py", line 277, in __getitem__',
           "    value = self.data[key]", "KeyError: 'text'"]
    sft = ["Traceback (most recent call last):",
           '  File "/env/lib/python3.11/site-packages/trl/trainer/sft_trainer.py", line 513, in tokenize',
           "    element[dataset_text_field] if formatting_func is None else formatting_func(element),"]
    h = scan_lines(sft + row)[0]
    assert h.pattern == "sft_text_field" and h.values["column"] == "text"
    mapped = ["Traceback (most recent call last):", '  File "/home/u/prep.py", line 30, in to_features',
              '    return tok(example["instruction"])']
    h = scan_lines(mapped + row[:2] + ["KeyError: 'instruction'"])[0]
    assert h.pattern == "data_invalid" and "'instruction'" in h.cause
    # a KeyError anywhere else stays the exception at its frame
    plain = ["Traceback (most recent call last):", '  File "/home/u/train.py", line 12, in <module>',
             '    cfg = CONFIGS[name]', "KeyError: 'qwen2'"]
    assert first_of(plain) == "exception"


def test_fsdp_layer_class_to_wrap_missing_from_the_model() -> None:
    # BCEmbedding#66 (BertLayer for an XLM-R model), transformers#37672 (a class named by accelerate)
    first_is(["Exception: Could not find the transformer layer class to wrap in the model."], "fsdp_wrap_class_not_found")
    h = scan_lines(["[rank0]: ValueError: Could not find the transformer layer class Llama4VisionEncoderLayer in the model."])[0]
    assert h.pattern == "fsdp_wrap_class_not_found" and h.values["layer_class"] == "Llama4VisionEncoderLayer"
    assert "fsdp_transformer_layer_cls_to_wrap" in fixof(h)["summary"]


def test_torchs_use_reentrant_notice_is_a_deprecation_note_that_a_cut_traceback_outranks() -> None:
    # axolotl#1021 (torch 2.1's wording), pytorch#160534 (2.4's): the default is changing, the run goes on
    for line in ["/opt/torch/utils/checkpoint.py:429: UserWarning: torch.utils.checkpoint: please pass in use_reentrant=True "
                 "or use_reentrant=False explicitly. The default value of use_reentrant will be updated to be False in "
                 "the future.",
                 "checkpoint.py:87: UserWarning: torch.utils.checkpoint: the use_reentrant parameter should be passed "
                 "explicitly. In version 2.5 we will raise an exception if use_reentrant is not passed."]:
        h = scan_lines([line])[0]
        assert h.pattern == "deprecation_info" and h.severity == "info", line
    # printed before a traceback that the excerpt cuts: 'the error is not in this text' is the first thing to say
    cut = ["  0%|          | 0/500 [00:00<?, ?it/s]/opt/torch/utils/checkpoint.py:429: UserWarning: torch.utils.checkpoint: "
           "please pass in use_reentrant=True or use_reentrant=False explicitly.",
           "Traceback (most recent call last):", '  File "/home/u/train.py", line 40, in <module>', "    trainer.train()",
           '  File "/env/lib/python3.10/site-packages/transformers/trainer.py", line 1555, in train']
    assert first_of(cut) == "log_cut_in_traceback"


def test_a_nan_loss_printed_by_a_bar_a_metrics_block_or_an_eval_dict_is_loss_nan() -> None:
    # sd-scripts#2137 (kohya's bar postfix), LlamaFactory#3474 (final eval metrics), llm2vec#174 (an eval dict)
    bar = "steps:  12%|█▏        | 120/1000 [02:10<15:54,  1.08s/it, avr_loss=nan]"
    h = scan_lines([bar])[0]
    assert h.pattern == "loss_nan" and h.phase == "training" and "bf16" in fixof(h)["summary"]
    block = ["***** eval metrics *****", "  epoch                   =        3.0", "  eval_loss               =        nan"]
    h = scan_lines(block)[0]
    assert h.pattern == "loss_nan" and h.phase == "eval"
    first_is(["{'eval_loss': nan, 'eval_accuracy': 0.0, 'eval_runtime': 17.3192, 'epoch': 0.08}"], "loss_nan")
    # finite values are not
    assert not scan_lines(["steps:  12%|█▏        | 120/1000 [02:10<15:54,  1.08s/it, avr_loss=0.0912]",
                           "  eval_loss               =     1.2345"])


def test_a_loss_that_is_zero_from_its_first_log_needs_two_logs_not_three() -> None:
    # fp16 skipping every step from the start (FastChat T5 threads: loss and learning rate both 0): never a real loss
    zero = "{'loss': 0.0, 'learning_rate': 0.0, 'epoch': 0.01}"
    first_is([zero, zero.replace("0.01", "0.02")], "loss_zero")
    # one log of 0.0 alone says too little
    assert "loss_zero" not in ids(scan_lines([zero]))


def test_two_different_deprecation_notices_are_two_notes_and_a_repeated_one_is_counted() -> None:
    # a healthy run repeats torch's use_reentrant notice; a trainer's renamed argument (trl's `tokenizer` ->
    # `processing_class`, trl#2227) printed later is another thing to read, not a repeat of the first
    torch_note = ("/env/torch/utils/checkpoint.py:87: UserWarning: torch.utils.checkpoint: the use_reentrant parameter "
                  "should be passed explicitly.")
    trl_note = ("/env/trl/trainer/sft_trainer.py:401: FutureWarning: `tokenizer` is deprecated and will be removed in "
                "version 5.0.0 for `SFTTrainer.__init__`. Use `processing_class` instead.")
    hits = [h for h in scan_lines([torch_note, "step", torch_note.replace(":87:", ":91:"), trl_note])
            if h.pattern == "deprecation_info"]
    assert [(h.line, h.count) for h in hits] == [(1, 2), (4, 1)]


def test_the_next_line_a_wrap_check_reads_is_the_first_line_after_without_reading_the_window() -> None:
    # every matched line asks whether a terminal wrapped it; reading the whole window after it (up to 120 lines,
    # each rank-split) for that cost the scan ~1 s per 10,000 matched lines. next_line must equal after[0].
    recs = [(1, "a"), (2, "[rank0]: b"), (3, "c"), (5, "e"), (6, "f"), (6, "f again"), (7, "g")]
    for idx, (ln, text) in enumerate(recs):
        ctx = logdiag._Ctx(None, text, ln, "", idx, recs)  # type: ignore[arg-type]
        fresh = logdiag._Ctx(None, text, ln, "", idx, recs)  # type: ignore[arg-type]
        assert fresh.next_line == (ctx.after[0] if ctx.after else ""), (ln, text)
    assert logdiag._Ctx(None, "a", 1, "", 0, recs).next_line == "b"  # type: ignore[arg-type]
