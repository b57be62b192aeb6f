"""fmllm-tui's Memory and Presets screens: the memory model's numbers, live changes, and
writes through the fixers (diff, confirm, backup)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("textual")

from tui_support import open_memory_screen, quiet_env, screen_text, wait_until, write_config  # noqa: E402

from fmllm_tui import catalogue, memory  # noqa: E402
from fmllm_tui.config import load_config  # noqa: E402
from fmllm_tui.datafile import example_lengths  # noqa: E402
from fmllm_tui.findings import CheckResult  # noqa: E402
from fmllm_tui.fitsearch import planning_seq_len  # noqa: E402
from fmllm_tui.tui import memplan  # noqa: E402
from fmllm_tui.tui.app import FmllmApp  # noqa: E402
from fmllm_tui.tui.screens.dialogs import ConfirmScreen  # noqa: E402
from fmllm_tui.tui.screens.memory import MemoryScreen  # noqa: E402
from fmllm_tui.tui.screens.presets import PresetsScreen  # noqa: E402
from fmllm_tui.tui.widgets.status import human_bytes  # noqa: E402

GiB = 1024**3
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    quiet_env(monkeypatch, tmp_path, None)
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "proj", model=MODEL)


def arch_of(model: str) -> dict:
    arch = catalogue.get_architecture(model)
    assert arch is not None
    return arch


def test_memory_screen_follows_keys_and_applies_through_the_fixers(cfg: Path) -> None:
    arch = arch_of(MODEL)
    base_inputs, _ = memory.inputs_from_view(load_config(cfg).view)
    lengths = example_lengths(load_config(cfg).view)

    def planned(inp: memory.PlanInputs) -> memory.PlanInputs:
        """The screen predicts at the checks' planned length; its knob stays max_seq_length."""
        return memory.vary(inp, seq_len=planning_seq_len(inp.seq_len, lengths)[0])

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", start_checks=False, deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_memory_screen(pilot)
            assert isinstance(screen, MemoryScreen) and screen.budget is not None

            def plan() -> memplan.MemoryPlan:
                assert isinstance(screen, MemoryScreen) and screen.plan is not None
                return screen.plan

            assert screen.budget.bytes == 24 * GiB and screen.budget.source == "--vram"
            want = memory.predict_inputs(planned(base_inputs), arch).peak_process_bytes
            await wait_until(pilot, lambda: f"predicted peak {human_bytes(want)}" in screen_text(app), 5, "the peak")

            # B doubles the micro-batch: the prediction is the model's for the new inputs
            await pilot.press("B")  # press() does not wait for the key's handler: wait for its effect
            await wait_until(pilot, lambda: plan().current.micro_batch == 2, 5, "B to double the micro-batch")
            # ... and halves the accumulation: the effective batch (1 x 4) is kept
            assert plan().current.grad_accum == 2 and plan().effective_batch() == (4, 4)
            want2 = memory.predict_inputs(planned(memory.vary(base_inputs, micro_batch=2, grad_accum=2)),
                                          arch).peak_process_bytes
            assert want2 != want
            await wait_until(pilot, lambda: f"predicted peak {human_bytes(want2)}" in screen_text(app), 5,
                             "the new peak")
            # every knob moves: checkpointing and 4-bit toggle, the optimizer cycles, rank halves
            await pilot.press("c", "w", "o", "r")

            def all_four_moved() -> bool:
                cur = plan().current
                return (cur.gradient_checkpointing is False and cur.use_4bit is False
                        and cur.optim != base_inputs.optim and cur.lora_r == base_inputs.lora_r // 2)

            await wait_until(pilot, all_four_moved, 5, "c, w, o and r to move their knobs")
            # ←/→ change the highlighted row, which follows the last letter key (LoRA rank, row 3);
            # one up is the sequence length
            await pilot.press("x", "up", "left")
            await wait_until(pilot, lambda: plan().current.seq_len == base_inputs.seq_len // 2, 5,
                             "left to halve the sequence length")
            await pilot.press("x")
            await wait_until(pilot, lambda: plan().current == plan().base, 5, "x to reset every knob")

            before = cfg.read_text()
            await pilot.press("B", "a")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#dialog-text")),
                             10, "the diff preview")
            preview = str(app.screen.query_one("#dialog-text").render())
            assert "per_device_train_batch_size: 2" in preview and "gradient_accumulation_steps: 2" in preview
            await pilot.press("y")
            await wait_until(pilot, lambda: "per_device_train_batch_size: 2" in cfg.read_text(), 10,
                             "the config write")
            assert "gradient_accumulation_steps: 2" in cfg.read_text()
            assert (cfg.parent / "config.yaml.bak").read_text() == before
            assert "# micro-batch" in cfg.read_text()  # the person's comment survives
            # the screen re-reads the file: the written value is now the file's own
            await wait_until(pilot, lambda: screen.plan is not None and plan().base.micro_batch == 2, 10,
                             "the reload")
            assert not plan().changed()

    asyncio.run(go())


def test_presets_screen_predicts_each_preset_and_applies_one(cfg: Path) -> None:
    from fmllm_tui.fixes import PRESETS, preset_changes
    from fmllm_tui.fixes.engine import render_loaded

    loaded = load_config(cfg)
    after = render_loaded(loaded, preset_changes(loaded, "7b-10gb"))[2]
    # Planned, as every face plans, at the data's longest example (up to max_seq_length).
    seq = planning_seq_len(after.view.training.max_seq_length, example_lengths(loaded.view))[0]
    want = memory.predict(after.view, arch_of("Qwen/Qwen2.5-7B-Instruct"), seq_len=seq).peak_process_bytes

    async def go() -> None:
        app = FmllmApp(cfg, gpu="RTX 3080", start_checks=False, deterministic=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            await wait_until(pilot, lambda: isinstance(app.screen, PresetsScreen) and bool(app.screen.rows), 20,
                             "the presets")
            screen = app.screen
            assert isinstance(screen, PresetsScreen)
            assert [r.name for r in screen.rows] == list(PRESETS)
            row = next(r for r in screen.rows if r.name == "7b-10gb")
            assert row.peak_bytes == want
            # the rows come before the budget and the table's repaint: wait for what is read
            await wait_until(pilot, lambda: all(s in screen_text(app) for s in ("7b-10gb", human_bytes(want),
                                                                               "GeForce RTX 3080")),
                             10, "the preset table")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#dialog-text")),
                             10, "the diff preview")
            assert "Qwen/Qwen2.5-7B-Instruct" in str(app.screen.query_one("#dialog-text").render())
            await pilot.press("y")
            await wait_until(pilot, lambda: "Qwen/Qwen2.5-7B-Instruct" in cfg.read_text(), 10, "the write")
            assert "# the model to fine-tune" in cfg.read_text()

    asyncio.run(go())


def test_unusable_model_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_env(monkeypatch, tmp_path, None)
    cfg = write_config(tmp_path / "proj", model="nobody/no-such-model-anywhere")

    async def go() -> None:
        app = FmllmApp(cfg, vram="10GiB", offline=True, start_checks=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            await wait_until(pilot, lambda: isinstance(app.screen, MemoryScreen) and app.screen.error is not None,
                             20, "the explanation")
            screen = app.screen
            assert isinstance(screen, MemoryScreen) and screen.error is not None
            assert "nobody/no-such-model-anywhere" in screen.error
            await pilot.press("B", "a")  # keys do nothing harmful without a plan
            assert isinstance(app.screen, MemoryScreen)

    asyncio.run(go())


def test_pow2_steps_and_toggles() -> None:
    inp = memory.PlanInputs(seq_len=1000, micro_batch=1, lora_r=8)
    assert memplan.step(inp, "seq_len", True).seq_len == 1024
    assert memplan.step(inp, "seq_len", False).seq_len == 512
    assert memplan.step(memory.vary(inp, seq_len=32), "seq_len", False).seq_len == 32  # the config's floor
    assert memplan.step(inp, "micro_batch", False).micro_batch == 1
    assert memplan.step(inp, "micro_batch", True).micro_batch == 2
    # the effective batch is kept where it can be: 1 x 8 -> 2 x 4 -> ... -> 8 x 1; past it, 16 x 1
    acc = memory.vary(inp, grad_accum=8)
    assert [(s.micro_batch, s.grad_accum) for s in (memplan.step(acc, "micro_batch", True),
                                                    memplan.step(memory.vary(acc, micro_batch=8, grad_accum=1),
                                                                 "micro_batch", True))] == [(2, 4), (16, 1)]
    assert memplan.step(memory.vary(inp, micro_batch=4, grad_accum=2), "micro_batch", False).grad_accum == 4
    assert memplan.step(inp, "lora_r", True).lora_r == 16
    assert memplan.step(inp, "gradient_checkpointing", True).gradient_checkpointing is not inp.gradient_checkpointing
    opts = memplan.optimizers()
    assert memplan.step(inp, "optim", True).optim == opts[(opts.index(inp.optim) + 1) % len(opts)]
    with pytest.raises(KeyError):
        memplan.step(inp, "nonsense", True)


def test_grouping_keeps_every_byte_and_budget_comes_from_the_checks() -> None:
    pred = memory.predict_inputs(memory.PlanInputs(), arch_of(MODEL))
    groups = memplan.grouped(pred.breakdown)
    assert sum(g[3] for g in groups) == sum(pred.breakdown.values())
    assert memplan.group_of("something_new")[0] == "other"
    res = CheckResult(id="config.fit", title="t", category="memory", severity="error", status="pass",
                      finding="fits", values={"budget_bytes": 10 * GiB, "gpu": "RTX 3080"})
    b = memplan.budget_from_checks({"config.fit": res})
    assert b is not None and b.bytes == 10 * GiB and b.label == "RTX 3080"
    assert memplan.budget_from_checks({}) is None


def test_wide_memory_screen_header_speed_and_eta(cfg: Path) -> None:
    """At 120 columns the breakdown sits beside the settings; the header names the card and where
    its budget came from in words; the speed is for that card and the ETA counts the planned steps."""
    view = load_config(cfg).view
    n = len(example_lengths(view) or [])
    steps = memory.planned_steps(view.training.max_steps, view.training.num_train_epochs, n,
                                  view.training.per_device_train_batch_size,
                                  view.training.gradient_accumulation_steps)
    assert steps == -(-n // 4)  # 66 examples, 1 x 4 per step, one epoch

    async def go() -> None:
        app = FmllmApp(cfg, gpu="RTX 3090", start_checks=False, deterministic=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await open_memory_screen(pilot)
            await pilot.pause(0.2)
            text = screen_text(app)
            lines = text.splitlines()
            assert lines[1].strip().startswith(f"{MODEL} on GeForce RTX 3090 (") and "from --gpu" in lines[1]
            assert "check config" not in text
            assert any("micro-batch" in ln and "│" in ln and "iB" in ln for ln in lines), text  # side by side
            assert "tokens/s on GeForce RTX 3090 · about " in text and f"for {steps} steps (estimates)" in text

    asyncio.run(go())


def test_budget_from_checks_prefers_a_result_that_names_its_gpu() -> None:
    def res(cid: str, values: dict) -> CheckResult:
        return CheckResult(id=cid, title=cid, category="memory", severity="error", status="pass", finding="",
                           values=values)

    b = memplan.budget_from_checks({"config.multi_gpu_fit": res("config.multi_gpu_fit", {"budget_bytes": 24 * GiB}),
                                    "config.fit": res("config.fit", {"budget_bytes": 24 * GiB, "gpu": "RTX 3090"})})
    assert b is not None and b.label == "RTX 3090" and memplan.source_words(b) == "as the checks plan"
    assert b.card() is not None and "3090" in b.card().name
    assert memory.planned_steps(10, 3.0, 66, 1, 4) == 10  # max_steps wins
    assert memory.planned_steps(-1, 2.0, 66, 2, 4) == 18  # ceil(66 / 8) = 9 per epoch
    assert memory.planned_steps(-1, 1.0, None, 1, 1) is None


def test_memory_screen_shows_why_the_config_cannot_be_read(cfg: Path) -> None:
    """An unreadable config: the reason (file and what is wrong) is on screen, not only the line
    "cannot be read" (the title is one line high and clipped the reason before)."""
    cfg.write_text("fine_tuning:\n  base_model_name: [unclosed\n")

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", start_checks=False, deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "MemoryScreen"
                             and app.screen.error is not None, 20, "the memory screen's error")
            await wait_until(pilot, lambda: "invalid YAML" in screen_text(app), 5, "the reason on screen")
            assert "cannot be read" in screen_text(app)

    asyncio.run(go())
