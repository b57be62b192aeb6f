"""The GPU database: lenient names, the documented ambiguity rule, usable memory, bad names."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from fmllm_tui import gpudb
from fmllm_tui.gpudb import GiB, MiB


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("3080", "GeForce RTX 3080"),
        ("RTX 3080", "GeForce RTX 3080"),
        ("rtx3080-10gb", "GeForce RTX 3080"),
        ("NVIDIA GeForce RTX 3080", "GeForce RTX 3080"),
        ("rtx 3080 12 gb", "GeForce RTX 3080 12GB"),
        ("3080 ti", "GeForce RTX 3080 Ti"),
        ("NVIDIA GeForce RTX 3080 Laptop GPU", "GeForce RTX 3080 Laptop"),
        ("a100 80gb", "A100 80GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80GB"),
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB"),
        ("h100 nvl", "H100 NVL 94GB"),
        ("NVIDIA H200", "H200 141GB"),
        ("Tesla T4", "Tesla T4"),
        ("t4", "Tesla T4"),
        ("Tesla V100-SXM2-32GB", "Tesla V100 32GB"),
        ("Tesla V100S-PCIE-32GB", "Tesla V100S 32GB"),
        ("Tesla P100-PCIE-16GB", "Tesla P100 16GB"),
        ("NVIDIA A10G", "A10G"),
        ("a10", "A10"),
        ("NVIDIA L4", "L4"),
        ("l40s", "L40S"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
        ("Quadro RTX 6000", "Quadro RTX 6000"),
        ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "RTX PRO 6000 Blackwell"),
        ("4070 ti super", "GeForce RTX 4070 Ti Super"),
        ("NVIDIA GeForce RTX 5090", "GeForce RTX 5090"),
        ("b200", "B200 180GB"),
    ],
)
def test_lenient_names(name: str, expected: str) -> None:
    assert gpudb.lookup(name).name == expected


@pytest.mark.parametrize(
    ("name", "expected", "mentions"),
    [
        ("3080", "GeForce RTX 3080", "12GB"),  # 10 GB and 12 GB: the smaller, said so
        ("a100", "A100 40GB", "A100 80GB"),
        ("NVIDIA GeForce RTX 4060 Ti", "GeForce RTX 4060 Ti", "16GB"),
        ("v100", "Tesla V100 16GB", "32GB"),
        ("h100", "H100 SXM 80GB", "PCIe"),  # same memory: the common form, said so
    ],
)
def test_ambiguous_names_pick_the_documented_variant_and_say_so(name: str, expected: str, mentions: str) -> None:
    card = gpudb.lookup(name)
    assert card.name == expected
    assert card.note and mentions in card.note and "Name the exact card" in card.note


def test_exact_names_carry_no_note() -> None:
    assert gpudb.lookup("rtx3080-10gb").note is None
    assert gpudb.lookup("A100 80GB").note is None


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("rtx 6000", "Quadro RTX 6000.*RTX 6000 Ada.*RTX PRO 6000"),
        ("3080 16gb", "10 or 12 GB, not 16 GB"),
        ("gtx 1080", "unknown GPU"),
        ("24gb", "--vram 24GiB"),
        ("", "empty GPU name"),
        ("   ", "empty GPU name"),
        ("4070 supr", "did not understand 'supr'.*4070 Super"),
        ("nvidia", "names no GPU model"),
        ("rtx 4090 3090", "did not understand"),
    ],
)
def test_bad_names_get_clear_errors(name: str, match: str) -> None:
    with pytest.raises(LookupError, match=match):
        gpudb.lookup(name)


def test_every_card_name_resolves_to_itself() -> None:
    for card in gpudb.all_cards():
        assert gpudb.lookup(card.name).name == card.name, card.name


def test_usable_memory_is_total_less_driver_reserve() -> None:
    h200 = gpudb.lookup("h200")
    assert h200.memory_bytes == 143771 * MiB
    # The rule gives what NVML showed on the idle H200 the anchors ran on (0.60 GiB).
    assert h200.driver_reserve_bytes / GiB == pytest.approx(0.60, abs=0.01)
    for card in gpudb.all_cards():
        assert 0 < card.usable_bytes < card.memory_bytes
        assert card.driver_reserve_bytes < 0.03 * card.memory_bytes + 300 * MiB
    assert gpudb.budget_for_gpu("3090") == gpudb.lookup("3090").usable_bytes


def test_bf16_follows_compute_capability() -> None:
    assert not gpudb.lookup("t4").bf16 and not gpudb.lookup("v100").bf16 and not gpudb.lookup("2080 ti").bf16
    assert gpudb.lookup("3090").bf16 and gpudb.lookup("a100").bf16 and gpudb.lookup("5090").bf16
    assert gpudb.lookup("p100").compute_capability == (6, 0)


def test_data_file_is_consistent() -> None:
    raw = json.loads(resources.files("fmllm_tui").joinpath("data/gpus.json").read_text())
    names = [g["name"] for g in raw["gpus"]]
    assert len(names) == len(set(names))
    for g in raw["gpus"]:
        nominal = g["memory_gb"] * 1e9
        total = g["memory_mib"] * MiB
        assert abs(total - nominal) / nominal < 0.10, g["name"]  # NVML total vs the marketing size
        assert g["segment"] in ("consumer", "laptop", "workstation", "datacenter")
        assert len(g["compute_capability"]) == 2 and g["sm_count"] > 0 and g["tflops16"] > 0
    segments = {g["segment"] for g in raw["gpus"]}
    assert segments == {"consumer", "laptop", "workstation", "datacenter"}


def test_match_nvml_uses_the_reported_total() -> None:
    assert gpudb.match_nvml("NVIDIA GeForce RTX 4060 Ti", 16380 * MiB).name == "GeForce RTX 4060 Ti 16GB"
    assert gpudb.match_nvml("NVIDIA GeForce RTX 4060 Ti", 8188 * MiB).name == "GeForce RTX 4060 Ti"
    assert gpudb.match_nvml("NVIDIA A100-SXM4-80GB").name == "A100 80GB"
    assert gpudb.match_nvml("Some Future GPU 9000") is None
    assert gpudb.match_nvml("") is None


def test_resolve_budget_takes_sizes_and_names() -> None:
    size, label, card = gpudb.resolve_budget("10GiB")
    assert size == 10 * GiB and card is None and "10.0 GiB" in label
    size, label, card = gpudb.resolve_budget("RTX 3090")
    assert card is not None and size == card.usable_bytes and label == "GeForce RTX 3090"
    with pytest.raises(ValueError, match="neither a memory size.*nor a known GPU"):
        gpudb.resolve_budget("lots")


def test_card_json_and_description() -> None:
    card = gpudb.lookup("3090")
    d = card.to_json()
    assert d["bf16"] is True and d["compute_capability"] == [8, 6]
    assert "24 GB" in card.describe() and "usable" in card.describe()
