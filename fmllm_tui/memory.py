"""Peak GPU memory of a (Q)LoRA fine-tune, predicted per component from config.json and the
training settings. Pure Python: no torch, microseconds per prediction.

What is modelled (bytes, per GPU):

* weights: 4-bit linears (packed nf4/fp4 plus absmax constants, nested or not), the 16-bit rest
  (embeddings, untied lm_head, norms, biases; fp32 after ``prepare_model_for_kbit_training``),
  input embeddings moved to the CPU by fmllm's offload;
* LoRA weights, gradients and optimizer state (AdamW 32-bit, 8-bit, paged: bitsandbytes pages
  only tensors of >= 1e5 elements, into managed memory that NVML counts and torch does not);
* saved activations: one hidden state per layer with gradient checkpointing, every layer's saved
  tensors without it (autograd's save rules for HF decoder layers, SDPA/flash vs eager's s**2);
* transients at the two moments that can hold the peak: the loss (full-vocabulary fp32 logits
  for the plain HF loss, one chunk for fmllm's chunked loss, a few MB for liger's fused loss)
  and the backward of the first recomputed layer (its saved tensors, the MLP's gradients and
  bitsandbytes' dequantized weight);
* the CUDA context and the caching allocator's reserve (NVML sees both, torch does not).

Outputs: the breakdown at the peak moment, the peak as torch counts it (max allocated), the
process peak as NVML sees it (the memory the training process takes, CUDA context included),
a range, and an estimate of tokens per second (a simple overhead + compute model).

Recipes (``recipe=``):

* ``fmllm``: fmllm's runner (fmllm_tui/runner/lean.py, loss.py): 4-bit per config, no
  ``prepare_model_for_kbit_training``, input grads enabled, non-reentrant checkpointing, fp32
  adapters, SDPA; with liger-kernel installed its RMSNorm/SwiGLU/RoPE kernels and fused linear
  cross-entropy, else the model's layers and a chunked cross-entropy (2**25 logits a chunk);
  untied input embeddings of 256 MiB or more on the CPU (offload_embeddings: auto); the caching
  allocator's expandable segments on. fmllm's launcher (runner/launch.py, ``child_env``) sets
  ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` in the training process's environment only
  when neither allocator variable is set; torch 2.13 reads ``PYTORCH_ALLOC_CONF`` first and its
  older name ``PYTORCH_CUDA_ALLOC_CONF`` only when the first is unset (c10/core/AllocatorConfig.h).
  The plan does not read the environment: a person's own setting of either variable wins in the
  run, and ``PlanInputs.expandable_segments`` says what the plan assumes (None: on for this
  recipe, as the launcher sets it; off for the other recipes).
* ``plain``: Trainer/SFTTrainer with ``prepare_model_for_kbit_training`` (4-bit only) and the HF
  loss (``logits.float()`` then cross-entropy over the whole vocabulary).
* ``noprep``: plain without ``prepare_model_for_kbit_training`` (``enable_input_require_grads``).
* ``lean``: noprep plus liger-kernel's patches (fused linear CE, RMSNorm, SwiGLU, RoPE).

Calibration. Everything is derived from shapes and autograd's save rules except the constants
in the "Calibration" block below (context, runtime misc, the allocator's reserve terms, the
paged-state factor, and the throughput constants). bench/memory_points.json holds the measured
points (anchor runs on an H200 and probe runs on an H100: 34 points over Qwen2.5 0.5B-14B,
Qwen3-1.7B, Llama-3.2-3B/3.1-8B, Mistral-7B; plain, noprep, lean and fmllm-like recipes); with
the constants fitted on all of them every process peak is within 2% (tests/test_memory.py
asserts 5%); fitted on the 17 anchor points alone, the 17 probe points land within -3%..+7%.
torch's allocated peak, which uses no fitted reserve term, is within 2.3% on every point.
Refit with ``python bench/memory_calibrate.py --fit`` after adding points.

FSDP over 2 H100s (Qwen2.5-7B/14B): the wrap phase within 0.8% and the training's allocations
within 1.2%; with the runner running FSDP's lazy init before handing the cache back, the 14B's
per-GPU peak (the wrap phase) within +0.2% and its training phase within +3.3% (micro-batch 1
and 2; bench/RESULTS.md).

Not calibrated by measurement yet (the range is widened): DDP, FSDP beyond 2 GPUs and one model
size with the cache handed back, eager
attention beyond two points, full fine-tuning, fp32 compute, fmllm's chunked loss, other
CUDA/driver stacks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # hints only: no import cost at run time
    from fmllm_tui.config import FineTuneConfig
    from fmllm_tui.gpudb import GpuCard

from fmllm_tui.units import GiB, MiB  # noqa: E402  (one vocabulary of sizes)

# --------------------------------------------------------------------------------------------
# Calibration: every constant that was fitted or measured rather than derived. Recalibrate with
# bench/memory_calibrate.py after adding points to bench/memory_points.json.
# --------------------------------------------------------------------------------------------

#: The CUDA context as the runner measures it right after CUDA initialises (NVML used - idle):
#: 0.603 GiB on every H100 run (driver 580, torch 2.11+cu130, lazy module loading).
CUDA_CONTEXT_BYTES = int(0.603 * GiB)
#: What the process adds outside torch's allocator after that: kernel modules loaded lazily at first
#: use (cuBLAS/cuBLASLt, bitsandbytes, Triton/Inductor kernels) and library handles. NVML's process
#: peak less torch's reserved peak was 0.746 GiB (to 0.005) on every runner point without paged state
#: or embedding offload, so 0.143 GiB above the context (bench/RESULTS.md, issue 19). The breakdown's
#: "cuda_context" holds both (what the card must have free beside torch's memory).
CUDA_MODULES_BYTES = int(0.143 * GiB)
#: Memory outside torch's allocator at the peak: the context and the lazily loaded modules.
OUTSIDE_ALLOCATOR_BYTES = CUDA_CONTEXT_BYTES + CUDA_MODULES_BYTES
#: GPU memory outside torch's allocator, beyond the CUDA context, in fmllm's runner process when
#: the input embedding is kept on the CPU: 0.321 GiB (Qwen2.5-7B) and 0.331 GiB (14B) measured on
#: an H100 (bench/RESULTS.md, harness "runner"), at micro-batch 1 and on models with q/k/v biases
#: only: none on Qwen2.5-7B/14B at micro-batch 2-8, none on Llama-3.1-8B or Mistral-7B (no biases)
#: at 2048-4096 tokens (issue 19). Its cause is not established; planned where it was seen.
OFFLOAD_RUNTIME_BYTES = int(0.326 * GiB)
#: fmllm's compiled layers with LoRA on the MLP (gate/up/down): one layer's backward holds this many
#: bytes per token per intermediate unit more than the eager-derived terms say (the down adapter's
#: bf16 input, its dropout copy and the recomputed product: ~3 bf16 intermediate rows). Measured
#: 6.1-6.5 on Qwen2.5-7B (r64), Llama-3.1-8B and Mistral-7B (r16/r64) and Qwen2.5-3B (r16), H100.
COMPILED_MLP_LORA_BYTES = 6.3
#: The plain recipe's prepare_model_for_kbit_training casts the 16-bit input embedding and head to
#: fp32: their 16-bit blocks are freed into the cache (one block tied, two untied). When the loss's
#: fp32 logits block (4 x tokens x vocab) is not smaller than such a block, nothing later fits
#: them and they stay reserved: this share of them (fitted on the runner's plain points of
#: issue 19: Llama-3.1-8B 2048 tokens, Mistral-7B and Qwen2.5-3B 1024x4; allocator snapshots show
#: the freed embedding-sized blocks inactive at the peak). With expandable segments the freed
#: pages are mostly remapped: a smaller share stays.
PREP_STRANDED = 0.93
PREP_STRANDED_EXPANDABLE = 0.0
#: How far the context may differ on other GPUs, drivers and CUDA builds (widens the range only).
CUDA_CONTEXT_SPREAD = int(0.25 * GiB)
#: Allocated bytes no component explains: cuBLAS workspaces, inputs, rotary tables, loader leftovers
#: (median residual of torch's peak over the points; the 4-bit weights alone were measured
#: 0.015-0.03 GiB above the packed sizes).
RUNTIME_MISC_BYTES = int(0.0751 * GiB)
#: The caching allocator's reserve (torch reserved peak - allocated peak), summed from:
#: * RESERVE_LOSS x the loss's bf16 logits block: the log-softmax gradient needs a new fp32 block
#:   while only the freed bf16 block is free (derived: 1.0), plus cached blocks it cannot reuse;
#: * one fp32 logits block more (2 x the bf16 block, derived) when cuBLAS's backward-thread
#:   workspace lands in a freed logits block: best fit puts it in the smallest free block that
#:   holds it, which is a logits block when every cached layer block is smaller than the
#:   workspace (small models; seen in allocator snapshots of Qwen2.5-0.5B vs Llama-3.1-8B);
#: * RESERVE_LAYER x one layer's backward transient (blocks cached from the recompute;
#:   RESERVE_LAYER_EXPANDABLE with expandable_segments:True, where freed blocks are reused more);
#: * RESERVE_EAGER x one layer's fp32 attention scores (eager attention only);
#: * RESERVE_BASE (RESERVE_BASE_EXPANDABLE with expandable_segments:True, as fmllm's launcher sets
#:   when no allocator variable is set).
#: Fitted on bench/memory_points.json with bench/memory_calibrate.py --fit.
RESERVE_LOSS = 1.05
RESERVE_LAYER = 0.30
RESERVE_LAYER_EXPANDABLE = 0.15
#: ... and with fmllm's compiled layers (expandable segments): Inductor's buffers of the recomputed
#: layer are cached between layers (fitted on the compiled runner points).
RESERVE_LAYER_COMPILED = 0.35
RESERVE_EAGER = 2.0
RESERVE_BASE = int(0.14 * GiB)
RESERVE_BASE_EXPANDABLE = 0
#: torch's default cuBLAS workspace per handle (CUBLAS_WORKSPACE_CONFIG): ":4096:8" on compute
#: capability 9.0 and newer, ":4096:2:16:8" before. Unknown GPU: the larger (the safer plan).
CUBLAS_WORKSPACE_HOPPER = 32 * MiB
CUBLAS_WORKSPACE_OLDER = 8 * MiB + 128 * 1024
#: bitsandbytes' paged optimizer state as NVML counts it (managed memory): about the state itself
#: (1.25 GiB seen for 1.22 GiB of state, Mistral-7B r64 all-linear, issue 19), but never less than
#: PAGED_NVML_FLOOR_BYTES once the state is sizeable (0.37 GiB seen for 0.19 and 0.31 GiB of state;
#: nothing seen for 0.04 GiB of 8-bit state).
PAGED_NVML_FACTOR = 1.02
PAGED_NVML_FLOOR_BYTES = int(0.375 * GiB)
PAGED_FLOOR_MIN_STATE = int(0.1 * GiB)
#: fmllm's compiled layers allocate this much more than the eager-derived terms (Inductor's
#: buffers and workspaces): median of the compiled runner points' allocated residual, 0.083 GiB.
COMPILED_MISC_BYTES = int(0.083 * GiB)
#: fmllm's compiled decoder layers (fmllm.compile): saved tensors per token and the layer backward's
#: temporaries as shares of the eager model's (liger layers off). Fitted on the compiled runner's
#: points of bench/memory_points.json (Qwen2.5-7B/14B, H100, torch 2.11).
COMPILED_SAVED_FACTOR = 0.72
COMPILED_WS_FACTOR = 0.45
#: Relative model error used for the range (the calibration target; widened for uncalibrated paths).
RANGE_REL = 0.05

# Derived constants (physics, not fitted) ------------------------------------------------------
#: Plain HF loss: fp32 log-softmax output + its incoming gradient + the gradient it produces are
#: alive together in backward (the bf16 logits were freed with the model outputs): 12 B per logit.
#: The anchor points' slope (2.04 MB per token for Qwen2.5-7B noprep) confirms it.
PLAIN_LOSS_BYTES_PER_LOGIT = 12
#: fmllm's pure-torch chunked cross-entropy (fmllm_tui/runner/loss.py): each chunk holds
#: CHUNKED_LOSS_ELEMENTS logits (2**25: 128 MiB in fp32), recomputed in backward; within a chunk the
#: bytes per logit are the plain loss's (assumed until the runner's own points are recorded).
CHUNKED_LOSS_ELEMENTS = 2**25
CHUNKED_LOSS_BYTES_PER_LOGIT = 12
#: The runner's offload_embeddings: auto moves untied input embeddings of at least this size.
OFFLOAD_AUTO_MIN_BYTES = 256 * MiB
#: liger's fused linear cross-entropy: bytes per logit of its chunk (bf16 logits + fp32 work).
LIGER_LOSS_BYTES_PER_LOGIT = 8
#: bitsandbytes' paged optimizer: tensors smaller than this stay in ordinary torch memory.
PAGED_MIN_NUMEL = 100_000
#: bitsandbytes 8-bit optimizers keep 32-bit state for tensors smaller than this.
OPTIM_8BIT_MIN_NUMEL = 4096
#: NCCL communicator buffers per process for DDP/FSDP: NVML's use outside torch's allocator in
#: an FSDP rank less the CUDA context, measured 0.68 GiB (1.431 - 0.75) on every rank of 4 FSDP
#: runs on 2 H100s (NCCL 2.28.9, NVLink multicast off; bench/RESULTS.md).
NCCL_BYTES = int(0.68 * GiB)
#: FSDP's wrap, torch's reserve above the allocated peak while it flattens and shards the root
#: unit: 0.307 GiB (Qwen2.5-14B) and 0.257 GiB (7B) measured on 2 H100s (bench/RESULTS.md).
FSDP_WRAP_RESERVE_BYTES = int(0.3 * GiB)

# Throughput model (tokens/s and the time before launch) --------------------------------------
# time per micro-batch = softmax_p(host time, GPU time) + the optimizer step / accumulation;
# GPU time = FLOPs / (MATMUL_EFFICIENCY x the card's dense 16-bit TFLOP/s) + memory traffic
# (dequantization, element-wise work, the adapters' own path, eager attention's scores, the loss over
# the vocabulary) / bandwidth; host time = decoder-layer passes x per-pass launch cost (eager or
# compiled layers, plus each kernel beyond a Llama layer's) + the loss chunks. Fitted constants are
# marked "fitted"; byte and kernel counts are read off the operations. Fitted on fmllm's runner on
# H100 hosts (bench/memory_calibrate.py --fit-speed; --speed --loo gives the leave-one-out error:
# worst 48%, median 8.8% over 27 points, Qwen3-4B compiled all-linear the worst); other cards scale
# only the GPU time, from their specifications.
#: Share of the card's dense 16-bit tensor throughput that training matmuls reach (fitted).
MATMUL_EFFICIENCY = 0.4746
#: Bytes moved per 4-bit weight element per pass: read packed 4-bit, write and read back 16-bit.
DEQUANT_BYTES_PER_PARAM = 4.5
#: Memory traffic of the element-wise work (norms, activations, rotary, dropout, residual adds, the
#: casts) per token per decoder layer per pass, in bytes per unit of (hidden + intermediate) size (fitted).
ELEMENTWISE_BYTES_PER_UNIT = 21.09
#: Host cost per chunk of the chunked or fused (liger) loss, forward and backward, seconds: a small
#: model's chunks are short (liger sizes them by vocab / hidden), so it launches many.
LOSS_CHUNK_S = 0.836e-3
#: Eager layers: host cost per decoder layer per pass (forward, backward, recompute), seconds.
OVERHEAD_LAYER_S = 2.763e-3
#: Eager layers: extra host+dequantize cost per 4-bit linear per pass, seconds.
OVERHEAD_4BIT_LINEAR_S = 0.260e-3
#: Eager layers: extra cost per LoRA adapter per pass (dropout, A, B, scale, add), seconds.
OVERHEAD_LORA_S = 0.182e-3
#: fmllm's compiled decoder layers: host cost per layer per pass, and per adapter per pass, seconds.
COMPILED_LAYER_S = 1.76e-3
COMPILED_LORA_S = 0.156e-3
#: Fixed host cost per micro-batch (data collation, embedding, loss launch, Trainer bookkeeping).
OVERHEAD_MICRO_BATCH_S = 0.0  # fitted to zero: the loss chunks and layer passes carry it
#: Optimizer cost per trainable tensor per optimizer step (unfused AdamW loops), seconds.
OVERHEAD_OPTIM_TENSOR_S = 25e-6
#: A fused optimizer's step (adamw_torch_fused: one launch over every tensor), seconds.
FUSED_OPTIM_STEP_S = 5e-3
#: Adapter element-wise traffic (dropout copy of the input, the rank-r path's read, scale and add
#: into the base output) per token per pass, bytes per unit of (in + out) features of each adapter
#: (fitted; it matters at micro-batch > 1 with all-linear adapters, where the GPU is the bound).
LORA_BYTES_PER_UNIT = 4.40
#: Eager attention's score tensors (heads x seq per token per layer) per forward pass, bytes per
#: score: the QK^T write, mask add, the fp32 soft-max (upcast, softmax, downcast) and the PV read;
#: compiled layers fuse the element-wise ops into one kernel; soft-capping (Gemma-2: divide, tanh,
#: multiply) adds three bf16 read+writes in eager layers.
EAGER_SCORE_BYTES = 24.0
COMPILED_SCORE_BYTES = 8.0
SOFTCAP_SCORE_BYTES = 12.0
#: The loss's element-wise traffic per logit per micro-batch (forward + backward), bytes: the plain
#: loss writes bf16 logits (2), upcasts them (2 + 4), log-softmax (4 + 4) and its gradient (4 + 4)
#: in fp32, casts back (4 + 2), the matmul reads them (2); the chunked loss does the same per chunk;
#: liger's fused kernel writes the logits, computes the gradient in place and the matmul reads it.
#: Soft-capped logits (the model's own cap on bf16 logits: divide, tanh, multiply) add ~30.
LOSS_TRAFFIC_BYTES: dict[str, float] = {"plain": 32.0, "chunked": 32.0, "liger": 8.0}
SOFTCAP_LOGIT_BYTES = 30.0
#: Eager layers: host cost per kernel launched per pass beyond a Llama layer with SDPA, seconds
#: (fitted; with autograd's backward kernels and the recompute), and
#: the kernel counts (an HF RMSNorm: cast, pow, mean, add, rsqrt, mul, mul weight, cast back).
#: Compiled layers get no such cost: the same cost there (fitted 70 us per kernel) moved the LOO error
#: of Qwen3-4B compiled from +46% to +35% only by moving Gemma-2-2B compiled from +5% to -27%.
OVERHEAD_KERNEL_S = 72.9e-6
EXTRA_NORM_KERNELS = 8
EAGER_ATTN_KERNELS = 5
SOFTCAP_KERNELS = 3
#: Soft maximum of host overhead and GPU time (the GPU works while the host launches).
OVERLAP_P = 4.75  # fitted
#: The first optimizer step's extra seconds over a steady one: compiling the decoder layer (compiled),
#: or allocator growth and kernel selection (eager). Medians of the runner's fitted points on an H100
#: (compiled 13.3-22.1 s over Llama-3.1-8B, Qwen2.5-3B, Mistral-7B, Gemma-2-2B; eager 0.5-1.3 s;
#: bench/RESULTS.md).
STARTUP_COMPILED_S = 17.6
STARTUP_EAGER_S = 0.7
#: Fallback GPU for speed estimates when none is named: dense 16-bit TFLOP/s and memory GB/s.
DEFAULT_TFLOPS = 989.0
DEFAULT_BANDWIDTH_GBS = 4800.0
#: GPUs whose speed constants were measured (gpudb names); any other card is scaled from its figures.
SPEED_MEASURED_CARDS = ("H100 SXM 80GB", "H200 141GB")

RECIPES = ("fmllm", "plain", "noprep", "lean")
MODES = ("single", "ddp", "fsdp")  # "auto" is read as single: the runner's default is one GPU
OPTIMIZERS_8BIT = {"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"}
_ROLES_ATTN_IN = ("q", "k", "v", "qkv")
_ROLES_MLP_IN = ("gate", "up", "gate_up")
_NAME_TO_ROLE = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "qkv_proj": "qkv",
    "gate_up_proj": "gate_up",
}


class ArchitectureError(ValueError):
    """A config.json the memory model cannot use; the message names the field and what to do."""


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchSpec:
    """The shapes of a dense decoder-only transformer, read from its config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    logit_softcap: bool = False
    attn_softcap: bool = False  # Gemma-2's attn_logit_softcapping: tanh keeps its scores for backward

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | ArchSpec) -> ArchSpec:
        """Read a config.json-like dict (``text_config`` of multimodal configs is used)."""
        if isinstance(cfg, ArchSpec):
            return cfg
        if not isinstance(cfg, dict):
            raise ArchitectureError(f"expected a config.json mapping, got {type(cfg).__name__}")
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        for moe_key in ("num_experts", "num_local_experts", "n_routed_experts"):
            if cfg.get(moe_key):
                raise ArchitectureError(
                    f"config.json has {moe_key}={cfg[moe_key]}: mixture-of-experts models are not "
                    "modelled yet; fmllm's memory plan covers dense decoder models"
                )

        def need(key: str) -> int:
            value = cfg.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArchitectureError(
                    f"config.json field {key!r} is {value!r}; expected a positive whole number "
                    "(is this a decoder-only causal LM config?)"
                )
            return value

        model_type = str(cfg.get("model_type") or "")
        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        kv_raw = cfg.get("num_key_value_heads")
        kv = need("num_key_value_heads") if kv_raw is not None else heads
        hd_raw = cfg.get("head_dim")
        head_dim = need("head_dim") if hd_raw is not None else hidden // heads
        if head_dim <= 0 or heads % kv:
            raise ArchitectureError(
                f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}"
            )
        tied = cfg.get("tie_word_embeddings")
        if tied is None:
            tied = model_type.startswith("gemma")
        gemma4 = model_type.startswith("gemma2") or model_type.startswith("gemma3")
        return cls(
            model_type=model_type,
            hidden=hidden,
            intermediate=need("intermediate_size"),
            layers=need("num_hidden_layers"),
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
            vocab=need("vocab_size"),
            tied=bool(tied),
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias")),
            o_bias=bool(cfg.get("attention_bias")) and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias")),
            fused_qkv=model_type == "phi3",
            fused_gate_up=model_type == "phi3",
            norms_per_layer=4 if gemma4 else 2,
            qk_norm=model_type in ("qwen3", "gemma3", "gemma3_text", "olmo2"),
            logit_softcap=bool(cfg.get("final_logit_softcapping")),
            attn_softcap=bool(cfg.get("attn_logit_softcapping")),
        )

    # Shapes ------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def roles(self) -> tuple[str, ...]:
        """The linear layers of one decoder layer, by role."""
        attn = ("qkv",) if self.fused_qkv else ("q", "k", "v")
        mlp = ("gate_up",) if self.fused_gate_up else ("gate", "up")
        return (*attn, "o", *mlp, "down")

    def shape(self, role: str) -> tuple[int, int]:
        """(in_features, out_features) of a linear role."""
        h, i = self.hidden, self.intermediate
        return {
            "q": (h, self.q_dim),
            "k": (h, self.kv_dim),
            "v": (h, self.kv_dim),
            "qkv": (h, self.q_dim + 2 * self.kv_dim),
            "o": (self.q_dim, h),
            "gate": (h, i),
            "up": (h, i),
            "gate_up": (h, 2 * i),
            "down": (i, h),
        }[role]


@dataclass(frozen=True)
class _ArchSums:
    """Sizes derived once per architecture (the search calls predict hundreds of times)."""

    linear_params: int  # per layer
    linear_4bit_bytes: dict[tuple[str, bool], int]  # (quant_type, nested) -> bytes for all layers
    other_params: int  # biases and norms, all layers plus the final norm
    embed_params: int
    head_params: int
    max_linear: int  # largest d_in*d_out (the dequantized weight buffer)
    matmul_params: int  # all layers' linear params (for FLOPs)
    total_params: int


def _quant_bytes(n: int, nested: bool) -> int:
    """Bytes of one bitsandbytes 4-bit weight of n elements: packed + absmax (+ nested state)."""
    blocks = -(-n // 64)
    packed = -(-n // 2)
    if nested:
        # uint8 absmax per 64, fp32 absmax per 256 blocks, the 256-entry fp32 code table.
        return packed + blocks + 4 * -(-blocks // 256) + 1024 + 64
    return packed + 4 * blocks + 64


@lru_cache(maxsize=256)
def _sums(arch: ArchSpec) -> _ArchSums:
    per_layer = 0
    q_nested = 0
    q_plain = 0
    max_lin = 0
    for role in arch.roles():
        d_in, d_out = arch.shape(role)
        n = d_in * d_out
        per_layer += n
        max_lin = max(max_lin, n)
        q_nested += _quant_bytes(n, True)
        q_plain += _quant_bytes(n, False)
    bias = 0
    if arch.qkv_bias:
        bias += arch.q_dim + 2 * arch.kv_dim
    if arch.o_bias:
        bias += arch.hidden
    if arch.mlp_bias:
        bias += 2 * arch.intermediate + arch.hidden
    norms = arch.norms_per_layer * arch.hidden + (2 * arch.head_dim if arch.qk_norm else 0)
    other = arch.layers * (bias + norms) + arch.hidden
    embed = arch.vocab * arch.hidden
    head = 0 if arch.tied else embed
    quant = {}
    for qt in ("nf4", "fp4"):
        quant[(qt, True)] = arch.layers * q_nested
        quant[(qt, False)] = arch.layers * q_plain
    return _ArchSums(
        linear_params=per_layer,
        linear_4bit_bytes=quant,
        other_params=other,
        embed_params=embed,
        head_params=head,
        max_linear=max_lin,
        matmul_params=arch.layers * per_layer,
        total_params=arch.layers * per_layer + other + embed + head,
    )


def param_count(arch: dict[str, Any] | ArchSpec) -> int:
    """Parameters of the model a config describes (e.g. Qwen2.5-7B -> 7,615,616,512)."""
    return _sums(ArchSpec.from_config(arch)).total_params


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanInputs:
    """Everything a prediction depends on, as plain values (cheap to vary with ``replace``)."""

    seq_len: int = 1024
    micro_batch: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = True
    use_4bit: bool = True
    quant_type: str = "nf4"
    nested_quant: bool = True
    compute_dtype: str = "bfloat16"
    use_adapter: bool = True
    lora_r: int = 8
    lora_targets: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_dropout: float = 0.05
    optim: str = "paged_adamw_32bit"
    recipe: str = "fmllm"
    attn: str = "sdpa"
    loss: str = "auto"  # fmllm recipe: auto | liger | chunked | plain
    offload_embeddings: str = "off"  # fmllm recipe: auto | on | off
    liger_layers: bool | None = None  # liger RMSNorm/SwiGLU/RoPE; None: lean yes, fmllm when installed
    compiled: bool | None = None  # fmllm's compiled decoder layers; None: as the runner decides (fmllm.compile: auto)
    padded: bool | None = None  # batches carry padding (a mask: SDPA repeats k/v); None: micro_batch > 1 and not packing
    packing: bool = False
    mode: str = "single"
    n_gpus: int = 1
    cpu_offload: bool = False  # FSDP: parameters and optimizer state on the CPU
    expandable_segments: bool | None = None  # the allocator's expandable_segments; None: on for the fmllm recipe
    compute_capability: tuple[int, int] | None = None  # the GPU's; None: planned as Hopper
    tflops: float | None = None  # the GPU's dense 16-bit TFLOP/s, for the speed estimate
    bandwidth_gbs: float | None = None

    @property
    def tokens(self) -> int:
        """Tokens per micro-batch (every example at full length: the worst batch)."""
        return self.seq_len * self.micro_batch


@dataclass
class Prediction:
    """A memory prediction. ``breakdown`` sums to ``peak_process_bytes``."""

    breakdown: dict[str, int]
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    peak_process_bytes: int
    low_bytes: int
    high_bytes: int
    tokens_per_step: int
    tokens_per_micro_batch: int
    tokens_per_second: float
    relative_speed: float  # tokens/s over the model's compute-bound speed on this card (<= 1)
    startup_seconds: float  # the first step's extra (layer compile or warm-up), for the time before launch
    peak_phase: str  # "loss" | "layer backward" | "FSDP wrap"
    recipe: str
    loss: str
    notes: list[str] = field(default_factory=list)
    inputs: PlanInputs | None = None
    #: Process peak of each phase that was compared (FSDP: "training" and "FSDP wrap").
    phase_peaks: dict[str, int] = field(default_factory=dict)
    #: FSDP: bytes of the root unit (input embedding, head) gathered on every GPU for each step.
    fsdp_root_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = asdict(self.inputs) if self.inputs else None
        return d

    @property
    def seconds_per_step(self) -> float:
        """Wall-clock seconds of one optimizer step at the predicted speed (inf without a speed)."""
        return self.tokens_per_step / self.tokens_per_second if self.tokens_per_second > 0 else float("inf")

    def eta_seconds(self, steps: int) -> float:
        """Wall-clock seconds of ``steps`` optimizer steps at the predicted speed, start-up included
        (model loading not included); estimate_time says for which card and on what basis."""
        return self.startup_seconds + max(0, steps) * self.seconds_per_step

    def describe(self) -> str:
        """A few lines for people: the peak, the range and the biggest components."""
        parts = sorted(self.breakdown.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts[:6] if v > 0)
        return (
            f"predicted process peak {self.peak_process_bytes / GiB:.2f} GiB "
            f"(range {self.low_bytes / GiB:.2f}-{self.high_bytes / GiB:.2f}; torch allocated "
            f"{self.peak_allocated_bytes / GiB:.2f}; peak during the {self.peak_phase}); GiB: {top}"
        )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def resolve_targets(targets: tuple[str, ...] | list[str] | str, arch: ArchSpec) -> tuple[tuple[str, ...], list[str]]:
    """LoRA target names -> linear roles of this architecture, and notes on names that differ."""
    notes: list[str] = []
    if isinstance(targets, str):
        if targets == "all-linear":
            return arch.roles(), notes
        targets = (targets,)
    roles: list[str] = []
    unknown: list[str] = []
    for name in targets:
        leaf = str(name).rsplit(".", 1)[-1]
        role = _NAME_TO_ROLE.get(leaf)
        if role is None:
            unknown.append(str(name))
            continue
        if arch.fused_qkv and role in ("q", "k", "v"):
            role = "qkv"
        elif not arch.fused_qkv and role == "qkv":
            roles.extend(r for r in ("q", "k", "v") if r not in roles)
            continue
        if arch.fused_gate_up and role in ("gate", "up"):
            role = "gate_up"
        elif not arch.fused_gate_up and role == "gate_up":
            roles.extend(r for r in ("gate", "up") if r not in roles)
            continue
        if role not in roles:
            roles.append(role)
    if unknown:
        notes.append(
            f"LoRA target(s) {', '.join(unknown)} are not linear layers of a {arch.model_type or 'this'} "
            "decoder layer; they were left out of the plan (peft stops with 'Target modules ... not found')"
        )
    fused = [t for t in targets if _NAME_TO_ROLE.get(str(t).rsplit(".", 1)[-1]) in ("q", "k", "v", "gate", "up")]
    if fused and (arch.fused_qkv or arch.fused_gate_up):
        notes.append(
            f"{arch.model_type} fuses q/k/v into qkv_proj and gate/up into gate_up_proj: planned "
            "with the fused layers (name them so in target_modules)"
        )
    return tuple(roles), notes


_FUSED_NAMES = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


def targets_as_named(targets: tuple[str, ...] | list[str] | str, arch: ArchSpec) -> list[str] | None:
    """The LoRA target names as this architecture names its layers, when the config's differ
    (phi3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj; a fused name on an unfused model
    is its parts); None when they already match (or are "all-linear" or a pattern). The names
    peft needs for the layers the prediction plans (resolve_targets)."""
    if isinstance(targets, str):
        return None
    out: list[str] = []
    for name in targets:
        leaf = str(name).rsplit(".", 1)[-1]
        role = _NAME_TO_ROLE.get(leaf)
        fused = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}.get(role or "")
        if fused and (arch.fused_qkv if fused == "qkv" else arch.fused_gate_up):
            names = [f"{fused}_proj"]
        elif role in _FUSED_NAMES and not (arch.fused_qkv if role == "qkv" else arch.fused_gate_up):
            names = [f"{part}_proj" for part in _FUSED_NAMES[role]]
        else:
            names = [str(name)]
        out.extend(n for n in names if n not in out)
    return out if out != [str(t) for t in targets] else None


def _lora_tensors(arch: ArchSpec, roles: tuple[str, ...], r: int) -> list[int]:
    """Element counts of every LoRA tensor (A and B of each adapted layer), all layers."""
    one_layer: list[int] = []
    for role in roles:
        d_in, d_out = arch.shape(role)
        one_layer.append(r * d_in)
        one_layer.append(d_out * r)
    return one_layer * arch.layers


def _optimizer_bytes(optim: str, numels: list[int], state_bytes: int = 4) -> tuple[int, int]:
    """(torch-visible state bytes, paged state bytes as NVML counts them) for these tensors.

    ``state_bytes`` is the size of a 32-bit-optimizer state element for torch's own AdamW (it
    keeps state in the parameter's dtype); bitsandbytes' 32-bit optimizers always use fp32.
    """
    paged = optim.startswith("paged_")
    base = optim.replace("paged_", "")
    torch_bytes = 0
    nvml_paged = 0
    states = 1 if base.startswith("lion") or base in ("rmsprop", "adagrad") else 2
    for n in numels:
        if base in ("adamw_8bit", "adamw_bnb_8bit", "lion_8bit"):
            if n < OPTIM_8BIT_MIN_NUMEL:
                b = 4 * states * n
            else:
                b = states * (n + 4 * -(-n // 256))  # uint8 state + fp32 absmax per 256
        elif base in ("adamw_torch", "adamw_torch_fused"):
            b = 2 * state_bytes * n
        elif base in ("adamw_32bit", "lion_32bit"):
            b = 4 * states * n
        elif base in ("rmsprop", "adagrad"):
            b = state_bytes * n
        elif base == "adafactor":
            b = 4 * n // 16 + 64  # factored second moments (rows + columns): tiny
        else:  # sgd: no momentum by default
            b = 0
        if paged and n >= PAGED_MIN_NUMEL and b:
            nvml_paged += b
        else:
            torch_bytes += b
    seen = PAGED_NVML_FACTOR * nvml_paged
    if nvml_paged >= PAGED_FLOOR_MIN_STATE:
        seen = max(seen, PAGED_NVML_FLOOR_BYTES)
    return torch_bytes, int(seen)


def resolve_loss(recipe: str, loss: str) -> str:
    """The loss implementation a recipe runs on the planned CUDA card: plain | chunked | liger
    (fmllm_tui.recipe's rule, with the GPU install the plan assumes: liger-kernel present)."""
    from fmllm_tui import recipe as rules

    if recipe in ("plain", "noprep"):
        return "plain"
    if recipe == "lean":
        return "liger"
    return rules.loss_kind(loss, cuda=True, has_liger=rules.PLANNED_GPU_HAS_LIGER)[0]


def resolve_compiled(inp: PlanInputs) -> bool:
    """Whether the runner compiles the decoder layers (fmllm.compile: auto does on one GPU of
    compute capability 7.0 or newer, with the fmllm recipe)."""
    cc = inp.compute_capability
    able = inp.recipe == "fmllm" and inp.mode != "fsdp" and (cc is None or cc >= (7, 0))
    if inp.compiled is not None:
        return inp.compiled and able
    return able and inp.mode == "single" and inp.n_gpus == 1


def resolve_liger_layers(inp: PlanInputs) -> bool:
    """Whether liger's RMSNorm/SwiGLU/RoPE kernels patch the model (fmllm_tui.recipe's rule on the
    planned CUDA card: the fmllm recipe, uncompiled, with the GPU install the plan assumes)."""
    from fmllm_tui import recipe as rules

    if resolve_compiled(inp):
        return False
    if inp.liger_layers is not None:
        return inp.liger_layers
    if inp.recipe == "lean":
        return True
    return rules.liger_layers(recipe=inp.recipe, cuda=True, compiled=False, want="auto",
                              has_liger=rules.PLANNED_GPU_HAS_LIGER)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def predict_inputs(inp: PlanInputs, arch: dict[str, Any] | ArchSpec) -> Prediction:
    """Predict peak memory (and speed) from plain inputs. The fast path the fit search uses.

    The recipe of a prediction: resolve what really runs; the static memory (weights, adapters,
    optimizer state) shared out over the GPUs; what one micro-batch adds (saved activations, one
    layer's backward, the loss); the larger of the two candidate peaks; what NVML sees beyond
    torch's allocations; FSDP's wrap phase where it peaks higher; the range and the speed.
    """
    notes: list[str] = []
    r = _resolve(inp, ArchSpec.from_config(arch), notes)
    bd: dict[str, int] = {}
    st = _static_memory(r, bd, notes)
    wrap = _multi_gpu(r, bd, st.embed_bytes, notes)
    static = sum(bd.values()) + st.mask_bytes
    act = _activations(r)
    loss = _loss(r, notes)
    alloc, phase = _two_peaks(r, bd, static, act, loss, st, notes)
    offload_runtime = _outside_torch(r, bd, act, loss, st)
    _monotone_envelope(r, bd, act, st, notes)
    peak = _Moment(bd, alloc, bd["allocator_reserve"], st.opt_paged, phase)
    phase_peaks = _fsdp_phases(wrap, peak)
    # The breakdown holds the peak moment's parts; it sums to the process peak by construction.
    assert peak.process == (peak.reserved + peak.paged + OUTSIDE_ALLOCATOR_BYTES + (NCCL_BYTES if r.n > 1 else 0)
                            + (OFFLOAD_RUNTIME_BYTES if offload_runtime else 0))
    low, high = _range(r, peak.process)
    tps, rel_speed = _speed(r, st, loss)
    return Prediction(
        breakdown=peak.bd,
        peak_allocated_bytes=int(peak.alloc),
        peak_reserved_bytes=int(peak.reserved),
        peak_process_bytes=int(peak.process),
        low_bytes=int(low),
        high_bytes=int(high),
        tokens_per_step=r.T * inp.grad_accum * r.n,
        tokens_per_micro_batch=r.T,
        tokens_per_second=tps,
        relative_speed=rel_speed,
        startup_seconds=STARTUP_COMPILED_S if r.compiled else STARTUP_EAGER_S,
        peak_phase=peak.phase,
        recipe=inp.recipe,
        loss=r.loss_kind,
        notes=notes,
        inputs=inp,
        phase_peaks=phase_peaks,
        fsdp_root_bytes=int(wrap.root if wrap else 0),
    )


def _check_choices(recipe: str, mode: str) -> None:
    """ValueError naming the allowed values when the recipe or the mode is not one fmllm plans."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (or auto), got {mode!r}")


@dataclass(frozen=True)
class _Run:
    """What really runs, resolved once per prediction from the inputs and the architecture."""

    inp: PlanInputs
    a: ArchSpec
    s: _ArchSums
    T: int  # tokens per micro-batch (T in the formulas)
    seq: int
    b: int  # micro-batch
    gc: bool  # gradient checkpointing
    c: int  # compute/model dtype bytes
    autocast: bool  # 16-bit compute: autocast casts fp32 inputs and weights
    quant: bool  # 4-bit base weights under an adapter
    prep: bool  # prepare_model_for_kbit_training: fp32 non-4-bit params
    full_ft: bool
    w16: int  # bytes of the non-4-bit parameters (fp32 after prep)
    res_b: int  # residual stream bytes (prep's fp32 embeddings make it fp32)
    mlp_b: int  # MLP activation bytes (Linear4bit returns its input's dtype: the residual stream's)
    liger_layers: bool
    loss_kind: str  # plain | chunked | liger
    attn: str  # the attention implementation that really runs
    eager: bool
    padded: bool  # batches carry padding
    padded_mask: bool  # SDPA gets a 4D bool padding mask (and repeats k/v); flash-attention takes none
    roles: tuple[str, ...]  # the adapted (or, full fine-tuning, trained) linear roles
    compiled: bool
    n: int  # GPUs the work is spread over (1 in single mode)


def _resolve(inp: PlanInputs, a: ArchSpec, notes: list[str]) -> _Run:
    """Check the inputs and resolve what the runner really runs: dtypes, kernels, loss, attention,
    the adapted layers (fmllm_tui.recipe's rules on the planned CUDA card)."""
    from fmllm_tui import recipe as rules

    _check_choices(inp.recipe, inp.mode)
    if inp.seq_len < 1 or inp.micro_batch < 1 or inp.n_gpus < 1 or inp.grad_accum < 1:
        raise ValueError("seq_len, micro_batch, grad_accum and n_gpus must be at least 1")
    c = 4 if inp.compute_dtype == "float32" else 2
    quant = inp.use_4bit and inp.use_adapter
    if inp.use_4bit and not inp.use_adapter:
        notes.append("a 4-bit model cannot be trained without an adapter (use_adapter: false): planned as 16-bit full fine-tuning")
    prep = inp.recipe == "plain" and quant
    liger_layers = resolve_liger_layers(inp)
    loss_kind = resolve_loss(inp.recipe, inp.loss)
    loss_kind, why = rules.lean_loss(loss_kind, softcap=a.logit_softcap)
    if why:
        notes.append(why)
    full_ft = not inp.use_adapter
    attn, attn_why = rules.attention(inp.attn, a.model_type)  # the implementation that really runs
    if attn_why:
        notes.append(attn_why)
    roles, tnotes = resolve_targets(inp.lora_targets, a) if not full_ft else (a.roles(), [])
    notes.extend(tnotes)
    padded = inp.padded if inp.padded is not None else (inp.micro_batch > 1 and not inp.packing)
    wide = 4 if prep else c
    return _Run(
        inp=inp, a=a, s=_sums(a), T=inp.tokens, seq=inp.seq_len, b=inp.micro_batch, gc=inp.gradient_checkpointing,
        c=c, autocast=c == 2, quant=quant, prep=prep, full_ft=full_ft, w16=wide, res_b=wide, mlp_b=wide,
        liger_layers=liger_layers, loss_kind=loss_kind, attn=attn, eager=attn == "eager", padded=padded,
        padded_mask=padded and attn not in ("eager", "flash_attention_2"), roles=roles,
        compiled=resolve_compiled(inp), n=inp.n_gpus if inp.mode != "single" else 1,
    )


# ---- static: weights, adapters, optimizer ----------------------------------------------------


@dataclass(frozen=True)
class _Static:
    """The static part's facts that later steps read (its bytes are in the breakdown)."""

    embed_bytes: int  # the input embedding on the GPU (0 when offloaded)
    offload: bool  # the runner keeps the input embedding on the CPU
    numels: list[int]  # element counts of the trained tensors
    n_train: int  # trained parameters
    optim: str  # the optimizer the runner really steps
    opt_paged: int  # paged optimizer state as NVML counts it
    mask_bytes: int  # the 4D attention mask


def _static_memory(r: _Run, bd: dict[str, int], notes: list[str]) -> _Static:
    """Weights, adapters, their gradients and optimizer state, and the attention mask: memory held
    through the whole step. Fills the breakdown's static parts."""
    embed_bytes, offload = _weights(r, bd, notes)
    numels, n_train, optim, opt_paged = _trainable(r, bd, notes)
    bd["runtime_misc"] = RUNTIME_MISC_BYTES
    if r.compiled:
        bd["runtime_misc"] += COMPILED_MISC_BYTES  # Inductor's buffers and workspaces
    mask_bytes = 0
    if r.eager:
        mask_bytes = r.c * r.b * r.seq * r.seq  # the 4D float causal mask
    elif r.padded_mask:
        mask_bytes = r.b * r.seq * r.seq  # the 4D bool padding mask SDPA gets
    return _Static(embed_bytes, offload, numels, n_train, optim, opt_paged, mask_bytes)


def _weights(r: _Run, bd: dict[str, int], notes: list[str]) -> tuple[int, bool]:
    """The model's weights on the GPU (4-bit linears and their constants, the 16-bit rest); returns
    the input embedding's bytes on the GPU and whether the runner keeps it on the CPU."""
    inp, s = r.inp, r.s
    sharded = inp.mode == "fsdp" and inp.n_gpus > 1
    offload = not sharded and inp.recipe == "fmllm" and (
        inp.offload_embeddings == "on"
        or (inp.offload_embeddings == "auto" and s.embed_params * r.w16 >= OFFLOAD_AUTO_MIN_BYTES)
    )
    if sharded and inp.offload_embeddings == "on":
        notes.append("FSDP shards the input embedding with the rest: fmllm.offload_embeddings does not apply")
    if offload and r.a.tied:
        if inp.offload_embeddings == "on":
            notes.append("input embeddings are tied to the output head: they cannot be offloaded")
        offload = False
    embed_bytes = 0 if offload else s.embed_params * r.w16
    if r.quant:
        wq = s.linear_4bit_bytes[(inp.quant_type, inp.nested_quant)]
        packed = s.matmul_params // 2
        bd["weights_4bit"] = packed
        bd["quant_constants"] = wq - packed
        bd["weights_16bit"] = embed_bytes + (s.head_params + s.other_params) * r.w16
    else:
        bd["weights_4bit"] = 0
        bd["quant_constants"] = 0
        bd["weights_16bit"] = embed_bytes + (s.head_params + s.other_params + s.matmul_params) * r.c
    if offload:
        notes.append(f"input embeddings on the CPU: {s.embed_params * r.c / GiB:.2f} GiB off the GPU")
    return embed_bytes, offload


def _trainable(r: _Run, bd: dict[str, int], notes: list[str]) -> tuple[list[int], int, str, int]:
    """The trained tensors (adapters, or every parameter), their gradients and the optimizer state;
    returns their element counts, the trained parameters, the optimizer that really steps and its
    paged state as NVML counts it."""
    inp, a, s = r.inp, r.a, r.s
    optim = inp.optim
    if r.full_ft:
        numels = [d_in * d_out for d_in, d_out in map(a.shape, a.roles())] * a.layers
        numels += [s.embed_params, s.other_params] + ([s.head_params] if s.head_params else [])
        n_train = s.total_params
        bd["lora_weights"] = 0
        bd["lora_grads"] = n_train * r.c
        opt_torch, opt_paged = _optimizer_bytes(inp.optim, numels, state_bytes=r.c)
        notes.append("full fine-tuning: planned from autograd's rules, not calibrated by measurement")
    else:
        from fmllm_tui import recipe as rules

        numels = _lora_tensors(a, r.roles, inp.lora_r)
        n_train = sum(numels)
        bd["lora_weights"] = 4 * n_train  # peft keeps adapters in fp32
        bd["lora_grads"] = 4 * n_train
        # The optimizer the runner really steps (a small adapter's 32-bit AdamW runs fused).
        optim = rules.fused_adamw(inp.optim, recipe=inp.recipe, cuda=True, distributed=inp.mode,
                                  trainable_params=n_train)
        if optim != inp.optim:
            notes.append(f"optimizer {inp.optim} runs as {optim} (a {4 * 2 * n_train / 2**20:.0f} MiB state is too "
                         "small for paging to matter)")
        opt_torch, opt_paged = _optimizer_bytes(optim, numels)
    bd["optimizer_state"] = opt_torch
    return numels, n_train, optim, opt_paged


# ---- multi-GPU ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wrap:
    """FSDP's wrap phase: its breakdown's allocated parts, torch's allocated peak, the root unit."""

    parts: dict[str, int]
    alloc: int
    root: int  # bytes of the root unit (input embedding, head) gathered on every GPU


def _multi_gpu(r: _Run, bd: dict[str, int], embed_bytes: int, notes: list[str]) -> _Wrap | None:
    """Share the static memory out over the GPUs: FSDP's shards (and its wrap phase, a second
    candidate peak, returned for later), DDP's gradient buckets."""
    if r.inp.mode == "fsdp" and r.n > 1:
        return _fsdp_shards(r, bd, embed_bytes, notes)
    if r.inp.mode == "ddp" and r.n > 1:
        bd["ddp_grad_buckets"] = bd["lora_grads"]
        notes.append(f"DDP over {r.n} GPUs: every GPU holds the whole model; per-GPU prediction, not yet calibrated")
    return None


def _fsdp_shards(r: _Run, bd: dict[str, int], embed_bytes: int, notes: list[str]) -> _Wrap:
    """FSDP+QLoRA (bf16 quant storage): parameters, adapters, grads and state sharded; embeddings and
    lm_head sit in the root unit and stay gathered; two layer units gathered."""
    n, s = r.n, r.s
    layer_w = (bd["weights_4bit"] + bd["quant_constants"]) // r.a.layers if r.quant else s.linear_params * r.c
    layer_lora = bd["lora_weights"] // r.a.layers
    # The root unit (input embedding, output head, final norm) is gathered from the forward to
    # the end of the backward, while its own shard stays allocated beside it.
    root = embed_bytes + s.head_params * r.w16
    sharded_keys = ("weights_4bit", "quant_constants", "lora_weights", "lora_grads", "optimizer_state")
    for k in sharded_keys:
        bd[k] = bd[k] // n
    other16 = bd["weights_16bit"] - root
    root_shard = root // n
    if r.inp.cpu_offload:
        for k in sharded_keys:
            bd[k] = 0
        other16 = root_shard = 0
        notes.append("FSDP CPU offload: sharded parameters and optimizer state live in CPU memory")
    bd["weights_16bit"] = root_shard + other16 // n
    bd["fsdp_gathered_root"] = root
    bd["fsdp_gathered_layers"] = 2 * (layer_w + layer_lora)
    # Wrapping (measured to 0.8% on 2 H100s): the model comes from CPU RAM unit by unit, the
    # root last; while FSDP flattens the root its moved parameters and the flat copy are both on
    # the GPU, beside every unit's shard (the adapters' gradients and state come later). With CPU
    # offload the shards wait in CPU RAM, but each unit is still flattened on the GPU (not measured).
    shards = (bd["weights_4bit"] + bd["quant_constants"] + bd["weights_16bit"] + bd["lora_weights"]
              + RUNTIME_MISC_BYTES)
    parts = {"weights_4bit": bd["weights_4bit"], "quant_constants": bd["quant_constants"],
             "weights_16bit": bd["weights_16bit"], "lora_weights": bd["lora_weights"],
             "runtime_misc": RUNTIME_MISC_BYTES, "fsdp_wrap_transient": 2 * max(root, layer_w)}
    notes.append(f"FSDP over {n} GPUs: per-GPU peak of wrapping (the model loads into CPU RAM and FSDP "
                 "moves it to the GPUs unit by unit) and of the sharded training, the larger counts; "
                 "measured on 2 H100s (bench/RESULTS.md)")
    return _Wrap(parts=parts, alloc=shards + parts["fsdp_wrap_transient"], root=root)


# ---- activations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Act:
    """What the layers add per micro-batch (bytes)."""

    layer_saved: int  # one decoder layer's saved tensors
    ws: int  # one layer's backward temporaries (its working set)
    ckpt: int  # the checkpointed hidden states (gradient checkpointing), else 0
    deq: int  # bitsandbytes' dequantized weight (the largest linear, 16-bit), 0 without 4-bit


def _activations(r: _Run) -> _Act:
    """Saved activations and one layer's backward working set, from autograd's save rules."""
    a, T = r.a, r.T
    h, inter = a.hidden, a.intermediate
    per_tok_saved = _saved_per_token(r)
    if r.compiled:
        # Compiled layers save fewer tensors (the partitioner recomputes pointwise work in backward)
        # and their fused backward holds fewer temporaries: fitted factors on the eager terms.
        per_tok_saved = int(per_tok_saved * COMPILED_SAVED_FACTOR)
    deq = 2 * r.s.max_linear if r.quant else 0
    ws_mlp = (1 if r.liger_layers else 3) * r.mlp_b * inter * T
    ws = max(ws_mlp, r.mlp_b * inter * T + deq) + 2 * r.res_b * h * T
    if r.eager:
        ws += (4 + r.c) * a.heads * r.seq * T
    if r.compiled:
        ws = int(ws * COMPILED_WS_FACTOR)
        if any(role in r.roles for role in ("gate", "up", "down", "gate_up")):
            ws += int(COMPILED_MLP_LORA_BYTES * inter * T)
    ckpt = a.layers * r.res_b * h * T if r.gc else 0
    return _Act(layer_saved=per_tok_saved * T, ws=ws, ckpt=ckpt, deq=deq)


def _saved_per_token(r: _Run) -> int:
    """Saved tensors per token of one decoder layer (autograd's save rules, HF modules)."""
    a, c, h = r.a, r.c, r.a.hidden
    norm_extra = (a.norms_per_layer - 2) * 4 * h  # Gemma's post-norms, fp32 copies
    if r.liger_layers:
        norm1 = 0 if r.gc else r.res_b * h
        norm2 = r.res_b * h
    else:
        norm1 = 0 if (r.gc and r.res_b == 4) else 4 * h
        norm2 = 4 * h
    qk = 4 * (a.q_dim + a.kv_dim) if a.qk_norm else 0
    if r.eager:
        # q and the repeated k, v (q-sized); the fp32 softmax and its 16-bit copy; with soft-capped
        # scores tanh's output too. The attention output is saved by o's adapter, if anything.
        attn = c * 3 * a.q_dim + (4 + c + (c if a.attn_softcap else 0)) * a.heads * r.seq
    else:
        kv_saved = a.q_dim if r.padded_mask else a.kv_dim
        attn = c * (2 * a.q_dim + 2 * kv_saved) + 4 * a.heads
    mlp = (2 if r.liger_layers else 3) * r.mlp_b * a.intermediate
    return norm1 + norm2 + norm_extra + qk + attn + mlp + _adapters_saved_per_token(r)


def _adapters_saved_per_token(r: _Run) -> int:
    """What the LoRA adapters save per token in one layer (inputs that are not saved already)."""
    c = r.c
    adapters = 0
    drop = r.inp.lora_dropout > 0 and not r.full_ft
    shared_in = {"attn": False, "mlp": False}
    for role in r.roles:
        d_in, _ = r.a.shape(role)
        group = "attn" if role in _ROLES_ATTN_IN else "mlp" if role in _ROLES_MLP_IN else role
        if drop:
            adapters += (c + 1) * d_in  # dropout copy (cast to the compute dtype) + bool mask
        elif r.autocast and not r.quant and not r.full_ft:
            # A 16-bit base: peft casts each adapter's input to its fp32 weights and autocast casts
            # it back, a new 16-bit copy per adapter (audited on the CPU against autograd).
            adapters += c * d_in
        elif role == "o":
            if r.eager:
                adapters += c * d_in  # eager attention does not keep its output (SDPA does)
        elif role == "down":
            adapters += c * d_in  # the MLP product, otherwise not saved
        elif r.prep:
            adapters += c * d_in  # autocast's bf16 copy of the fp32 input, one per adapter
        elif not shared_in[group]:
            adapters += c * d_in
            shared_in[group] = True
        if not r.full_ft:
            adapters += c * r.inp.lora_r  # lora_A's output, saved by lora_B
    return adapters


# ---- the loss ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loss:
    """The loss moment's transients (bytes) and its logits blocks."""

    final_saved: int  # the final norm's saved input
    chunk: int  # tokens per loss chunk (T for the plain loss)
    logits_block: int  # one bf16 logits block (a chunk's for the chunked and fused losses)
    nbytes: int  # the loss's own transients
    head_copy: int  # autocast's bf16 copy of prep's fp32 head


def _loss(r: _Run, notes: list[str]) -> _Loss:
    """The loss's transients: full-vocabulary fp32 logits (plain), one chunk (chunked), liger's
    fused chunk; plus what the final norm saved and autocast's copy of an fp32 head."""
    T, vocab, h = r.T, r.a.vocab, r.a.hidden
    final_saved = (r.res_b if r.liger_layers else 4) * h * T  # the final norm's saved input
    chunk = T
    if r.loss_kind == "plain":
        logits_block = 2 * T * vocab
        loss_b = PLAIN_LOSS_BYTES_PER_LOGIT * T * vocab
        if r.a.logit_softcap:
            # logits / cap -> tanh -> x cap: tanh saves its bf16 output for backward; the division's
            # output is freed once tanh has run and the product is the logits counted above.
            loss_b += 2 * T * vocab
            notes.append("final logit soft-capping keeps one more bf16 copy of the logits (tanh's output)")
    elif r.loss_kind == "chunked":
        chunk = min(T, max(1, CHUNKED_LOSS_ELEMENTS // vocab))
        logits_block = 2 * chunk * vocab
        loss_b = CHUNKED_LOSS_BYTES_PER_LOGIT * chunk * vocab + 2 * r.c * h * T  # + target rows, their grad
        if r.a.logit_softcap:
            loss_b += 4 * chunk * vocab  # the chunk's fp32 tanh output, saved for its backward
    elif r.loss_kind == "liger":
        chunk = 1 << max(0, math.ceil(math.log2(max(1, -(-T // -(-vocab // h))))))
        logits_block = 2 * chunk * vocab
        loss_b = LIGER_LOSS_BYTES_PER_LOGIT * chunk * vocab + r.c * h * T
    else:
        raise ValueError(f"loss must be plain, chunked, liger or auto, got {r.inp.loss!r}")
    head_copy = r.s.embed_params * 2 if (r.prep and r.autocast) else 0  # autocast's bf16 copy of the fp32 head
    return _Loss(final_saved, chunk, logits_block, loss_b, head_copy)


# ---- the two candidate peaks -------------------------------------------------------------------


def _two_peaks(r: _Run, bd: dict[str, int], static: int, act: _Act, loss: _Loss, st: _Static,
               notes: list[str]) -> tuple[int, str]:
    """torch's allocated peak, the larger of the loss moment and the first recomputed layer's
    backward, and which it is; the breakdown gets that moment's parts."""
    a, gc = r.a, r.gc
    # With checkpointing the hidden states, else every layer's saved tensors (and, under autocast,
    # the adapters' 16-bit weight copies every layer keeps for backward).
    saved = act.ckpt if gc else a.layers * act.layer_saved
    cast_copies = 2 * st.n_train if (not gc and r.autocast and not r.full_ft) else 0
    recomputed = act.layer_saved if gc else 0  # the first recomputed layer's saved tensors
    loss_phase = static + saved + loss.final_saved + loss.nbytes + loss.head_copy + cast_copies
    layer_phase = static + saved + recomputed + act.ws + cast_copies
    if r.full_ft:
        # Full fine-tuning: the optimizer step (foreach temporaries) can peak after backward.
        layer_phase = max(layer_phase, static + r.s.total_params * r.c)
    phase = "loss" if loss_phase >= layer_phase else "layer backward"
    bd["checkpoints" if gc else "activations"] = saved
    if phase == "loss":
        bd["final_norm"] = loss.final_saved
        bd["loss"] = loss.nbytes
        bd["head_autocast_copy"] = loss.head_copy
    else:
        if gc:
            bd["recomputed_layer"] = recomputed
        bd["backward_working_set"] = layer_phase - static - saved - recomputed - cast_copies
    if not gc:
        bd["lora_autocast_copies"] = cast_copies
    if st.mask_bytes:
        bd["attention_mask"] = st.mask_bytes
    if r.eager:
        notes.append(f"eager attention keeps {(4 + r.c) * a.heads * r.seq * r.T / GiB:.2f} GiB of seq x seq "
                     "scores per layer")
    return max(loss_phase, layer_phase), phase


# ---- what NVML sees ----------------------------------------------------------------------------


def _outside_torch(r: _Run, bd: dict[str, int], act: _Act, loss: _Loss, st: _Static) -> bool:
    """What NVML counts beyond torch's allocated peak: the allocator's reserve, paged optimizer
    state, the CUDA context and modules, the offload runtime, NCCL's buffers. Returns whether the
    offload runtime was planned."""
    bd["allocator_reserve"] = _allocator_reserve(r, act, loss)
    bd["optimizer_paged"] = st.opt_paged
    bd["cuda_context"] = OUTSIDE_ALLOCATOR_BYTES
    offload_runtime = st.offload and r.a.qkv_bias and r.b == 1  # where it was seen (OFFLOAD_RUNTIME_BYTES)
    if offload_runtime:
        bd["offload_runtime"] = OFFLOAD_RUNTIME_BYTES
    if r.n > 1:
        bd["nccl_buffers"] = NCCL_BYTES
    for k, v in bd.items():
        bd[k] = int(v)
    return offload_runtime


def _cublas_workspace(inp: PlanInputs) -> int:
    """torch's cuBLAS workspace per handle on the planned GPU (an unknown GPU: Hopper's, the larger)."""
    cc = inp.compute_capability
    return CUBLAS_WORKSPACE_HOPPER if (cc is None or cc >= (9, 0)) else CUBLAS_WORKSPACE_OLDER


def _layer_block(r: _Run, deq: int) -> int:
    """The largest block the forward leaves cached: the dequantized weight, an MLP intermediate,
    a norm's fp32 copy (eager: the fp32 scores)."""
    a, T = r.a, r.T
    return max(deq, r.mlp_b * T * a.intermediate, 4 * T * a.hidden,
               4 * r.b * a.heads * r.seq * r.seq if r.eager else 0)


def _allocator_reserve(r: _Run, act: _Act, loss: _Loss) -> int:
    """torch's reserved peak less its allocated peak (the terms of RESERVE_* in the calibration)."""
    inp, a = r.inp, r.a
    expandable = inp.expandable_segments if inp.expandable_segments is not None else inp.recipe == "fmllm"
    workspace = _cublas_workspace(inp)
    layer_factor = (RESERVE_LAYER_COMPILED if r.compiled and expandable else
                    RESERVE_LAYER_EXPANDABLE if expandable else RESERVE_LAYER)
    reserve = RESERVE_LOSS * loss.logits_block + layer_factor * (act.layer_saved + act.ws)
    if _layer_block(r, act.deq) < workspace <= loss.logits_block:
        reserve += 2 * loss.logits_block
    if r.eager:
        reserve += RESERVE_EAGER * 4 * r.b * a.heads * r.seq * r.seq
    freed16 = 2 * r.s.embed_params  # one 16-bit embedding-sized block freed by the fp32 cast
    if r.prep and r.loss_kind == "plain" and 4 * r.T * a.vocab >= freed16:
        reserve += (PREP_STRANDED_EXPANDABLE if expandable else PREP_STRANDED) * (1 if a.tied else 2) * freed16
    return int(reserve + (RESERVE_BASE_EXPANDABLE if expandable else RESERVE_BASE))


def _training_peak(inp: PlanInputs, a: ArchSpec) -> int:
    """The process peak of training (FSDP's wrap phase aside) for these inputs."""
    pred = predict_inputs(inp, a)
    return pred.phase_peaks.get("training", pred.peak_process_bytes)


def _monotone_envelope(r: _Run, bd: dict[str, int], act: _Act, st: _Static, notes: list[str]) -> None:
    """Raise the allocator's reserve to the plan of smaller inputs where the model would otherwise
    say that more tokens need less memory."""
    inp, a, b = r.inp, r.a, r.b
    # Past the sequence length where an MLP/norm/score block outgrows the workspace the stranding
    # stops: never predict less than the stranded plan just below that length.
    workspace = _cublas_workspace(inp)
    if act.deq < workspace <= _layer_block(r, act.deq) and r.loss_kind != "liger":
        per_seq = b * max(r.mlp_b * a.intermediate, 4 * a.hidden)
        s_star = (workspace - 1) // per_seq
        if r.eager:
            s_star = min(s_star, math.isqrt((workspace - 1) // (4 * b * a.heads)))
        below_peaks = []
        if 1 <= s_star < r.seq:
            below_peaks.append(_training_peak(replace(inp, seq_len=s_star), a))
        if b > 1:  # and monotone in the micro-batch: at least the (enveloped) plan one smaller
            below_peaks.append(_training_peak(replace(inp, micro_batch=b - 1), a))
        if below_peaks:
            extra = max(below_peaks) - sum(bd.values())
            if extra > 0:
                bd["allocator_reserve"] += extra
                notes.append(
                    "planned with the allocator's pattern just below this length (conservative): shorter "
                    "sequences strand a freed logits block, this one may not"
                )
    if st.offload and a.qkv_bias and b > 1:
        # The offload runtime was seen at micro-batch 1 only: never plan less than micro-batch 1 needs.
        extra = _training_peak(replace(inp, micro_batch=1), a) - sum(bd.values())
        if extra > 0:
            bd["allocator_reserve"] += extra


# ---- the peak moment, the range, the speed -----------------------------------------------------


@dataclass
class _Moment:
    """The peak moment: its parts (the breakdown), torch's allocated peak, the allocator's reserve
    above it, the paged optimizer state NVML counts, and which phase it is."""

    bd: dict[str, int]
    alloc: int
    reserve: int
    paged: int
    phase: str

    @property
    def reserved(self) -> int:
        return self.alloc + self.reserve

    @property
    def process(self) -> int:
        return sum(self.bd.values())


def _fsdp_phases(wrap: _Wrap | None, peak: _Moment) -> dict[str, int]:
    """FSDP: each phase's process peak; when wrapping peaks higher than training, that moment's
    parts become the breakdown (``peak`` is updated)."""
    if wrap is None:
        return {}
    wrap_process = wrap.alloc + FSDP_WRAP_RESERVE_BYTES + OUTSIDE_ALLOCATOR_BYTES + NCCL_BYTES
    phase_peaks = {"training": int(peak.process), "FSDP wrap": int(wrap_process)}
    if wrap_process > peak.process:
        bd = {**wrap.parts, "allocator_reserve": FSDP_WRAP_RESERVE_BYTES, "optimizer_paged": 0,
              "cuda_context": OUTSIDE_ALLOCATOR_BYTES, "nccl_buffers": NCCL_BYTES}
        peak.bd = {k: int(v) for k, v in bd.items()}
        peak.alloc, peak.reserve, peak.paged, peak.phase = wrap.alloc, FSDP_WRAP_RESERVE_BYTES, 0, "FSDP wrap"
    return phase_peaks


def _range(r: _Run, process: int) -> tuple[int, int]:
    """The predicted process peak's range: the calibration target, widened for uncalibrated paths."""
    inp = r.inp
    rel = RANGE_REL
    if r.compiled and (r.padded or not r.quant or r.eager or inp.compute_dtype != "bfloat16"):
        rel += 0.03  # the compiled factors were fitted on unpadded 4-bit bf16 SDPA runs only
    if inp.recipe == "fmllm" and r.loss_kind == "chunked":
        rel += 0.03  # the runner's chunked loss has no measured point yet
    if inp.mode != "single" and r.n > 1:
        rel += 0.10
    if r.eager or r.full_ft or inp.compute_dtype == "float32":
        rel += 0.10
    spread = int(rel * process) + CUDA_CONTEXT_SPREAD
    return max(0, process - spread), process + spread


def _speed(r: _Run, st: _Static, loss: _Loss) -> tuple[float, float]:
    """Tokens per second and the share of the compute-bound speed (see _throughput)."""
    fused_optim = not r.full_ft and st.optim == "adamw_torch_fused"
    loss_chunks = -(-r.T // loss.chunk) if r.loss_kind in ("liger", "chunked") else 0
    return _throughput(r, st.n_train, len(st.numels), fused_optim, loss_chunks)


def _flops_per_token(r: _Run, n_train: int) -> tuple[float, float, float]:
    """Matmul FLOPs per token: (forward, backward, recomputed forward). Eager attention computes the
    whole seq x seq square (the mask only zeroes half); SDPA/flash skip the masked half."""
    a, s = r.a, r.s
    head = 2 * a.vocab * a.hidden  # lm_head FLOPs per token, forward
    attn = a.layers * 2 * r.seq * a.q_dim * (2 if r.eager else 1)  # causal ~ s/2 per token, forward
    layers_fwd = 2 * s.matmul_params + attn
    lora_fwd = 2 * n_train
    fwd = layers_fwd + head + lora_fwd
    bwd = (2 * s.matmul_params + 2 * attn + head) + 2 * lora_fwd  # input grads; attention's backward ~2x
    if not r.inp.use_adapter:
        bwd += 2 * (s.matmul_params + a.vocab * a.hidden)  # weight gradients
    return fwd, bwd, (layers_fwd + lora_fwd if r.gc else 0)


def _traffic_per_token(r: _Run, passes: int) -> float:
    """Memory traffic per token of the memory-bound work, bytes: the element-wise work of each layer,
    the adapters' own element-wise path, eager attention's score tensors and the loss over the vocab."""
    a = r.a
    units = ELEMENTWISE_BYTES_PER_UNIT * (a.hidden + a.intermediate)
    units += LORA_BYTES_PER_UNIT * sum(sum(a.shape(role)) for role in r.roles) if r.inp.use_adapter else 0
    per_layer = passes * units
    if r.eager:  # heads x seq scores per token per layer; the backward moves about twice the forward
        score = EAGER_SCORE_BYTES if not r.compiled else COMPILED_SCORE_BYTES
        score += SOFTCAP_SCORE_BYTES if a.logit_softcap and not r.compiled else 0
        per_layer += (passes + 1) * score * a.heads * r.seq
    loss = LOSS_TRAFFIC_BYTES.get(r.loss_kind, 0) + (SOFTCAP_LOGIT_BYTES if a.logit_softcap and r.loss_kind == "plain" else 0)
    return a.layers * per_layer + loss * a.vocab


def _throughput(r: _Run, n_train: int, n_tensors: int, fused_optim: bool = False, loss_chunks: int = 0) -> tuple[float, float]:
    """Tokens per second (estimate) and the share of the compute-bound speed it reaches.

    time per micro-batch = softmax_p(host overhead, GPU time) + optimizer step / accumulation, where
    host overhead = layers x passes x (per-layer + per-4-bit-linear + per-adapter + per-extra-kernel
    costs) + per loss chunk, GPU time = matmul FLOPs / (efficiency x card TFLOP/s) + (dequantization +
    element-wise + adapter + eager-score + loss traffic) / bandwidth; passes = forward + backward (+ a
    recomputed forward with checkpointing). The frozen (4-bit) weights get no weight gradient.
    """
    inp, a = r.inp, r.a
    T = inp.tokens
    tflops = (inp.tflops or DEFAULT_TFLOPS) * 1e12 * MATMUL_EFFICIENCY
    bw = (inp.bandwidth_gbs or DEFAULT_BANDWIDTH_GBS) * 1e9
    fwd, bwd, recompute = _flops_per_token(r, n_train)
    passes = 3 if r.gc else 2
    deq_traffic = passes * r.s.matmul_params * DEQUANT_BYTES_PER_PARAM if r.quant else 0
    gpu_t = T * (fwd + bwd + recompute) / tflops + (deq_traffic + T * _traffic_per_token(r, passes)) / bw
    if r.compiled:  # Inductor fuses the extra norms' ops (a per-kernel cost here failed LOO: see OVERHEAD_KERNEL_S)
        per_layer = COMPILED_LAYER_S + COMPILED_LORA_S * len(r.roles)
    else:
        # Kernels eager layers launch beyond a Llama layer with SDPA: Gemma-2's two more norms,
        # Qwen3's q/k norms (EXTRA_NORM_KERNELS each), eager attention's score ops, soft-capping.
        extra = EXTRA_NORM_KERNELS * (a.norms_per_layer - 2 + (2 if a.qk_norm else 0))
        extra += (EAGER_ATTN_KERNELS + (SOFTCAP_KERNELS if a.logit_softcap else 0)) if r.eager else 0
        per_layer = (OVERHEAD_LAYER_S + (OVERHEAD_4BIT_LINEAR_S * len(a.roles()) if r.quant else 0)
                     + OVERHEAD_LORA_S * len(r.roles) + OVERHEAD_KERNEL_S * extra)
    host_t = a.layers * passes * per_layer + OVERHEAD_MICRO_BATCH_S + LOSS_CHUNK_S * loss_chunks
    if inp.recipe == "fmllm" and inp.offload_embeddings in ("on", "auto") and not a.tied:
        host_t += 1e-3  # CPU lookup and a host-to-device copy per micro-batch
    optim_t = FUSED_OPTIM_STEP_S if fused_optim else OVERHEAD_OPTIM_TENSOR_S * n_tensors
    t = (host_t**OVERLAP_P + gpu_t**OVERLAP_P) ** (1.0 / OVERLAP_P) + optim_t / max(1, inp.grad_accum)
    ideal = T * (fwd + bwd) / tflops  # compute-bound, no recompute, no host overhead
    return T / t, min(1.0, ideal / t)


@dataclass(frozen=True)
class TimeEstimate:
    """The run's time before launch: speed, start-up and wall clock for ``steps`` optimizer steps."""

    tokens_per_second: float
    seconds_per_step: float
    startup_s: float  # the first step's extra: the layer compile (compiled) or warm-up (eager)
    steps: int
    tokens_per_step: int
    eta_s: float  # startup_s + steps x tokens_per_step / tokens_per_second (model loading not included)
    card: str
    basis: str  # "measured" (the card kind the constants were fitted on) or how it was scaled


def planned_steps(max_steps: int, epochs: float, n_examples: int | None, micro_batch: int,
                  grad_accum: int, n_gpus: int = 1) -> int | None:
    """Optimizer steps the run will take: ``max_steps`` when set (> 0), else epochs x batches of
    micro-batch x accumulation x GPUs examples, rounded up per epoch as the Trainer does. None
    when the data could not be read."""
    if max_steps > 0:
        return int(max_steps)
    if not n_examples:
        return None
    per_step = max(1, micro_batch * grad_accum * max(1, n_gpus))
    return max(1, math.ceil(math.ceil(n_examples / per_step) * epochs))


def estimate_time(
    inp: PlanInputs, arch: dict[str, Any] | ArchSpec, *, steps: int, gpu: GpuCard | None = None,
    prediction: Prediction | None = None,
) -> TimeEstimate:
    """Predicted tokens/s and wall-clock ETA of ``steps`` optimizer steps on ``gpu`` (a gpudb card;
    None: the card in ``inp``'s figures, else an H200-class default). Torch-free, microseconds.

    ETA = start-up (the compile of the decoder layer, when the runner compiles) + steps x tokens per
    step / tokens per second. Cards other than the H100/H200 it was calibrated on are estimates:
    the GPU part of each micro-batch is scaled by their dense 16-bit TFLOP/s and memory bandwidth,
    the host part (kernel launches, Python) is kept as measured on the H100/H200 hosts.
    Pass ``prediction`` (of the same inputs) to skip predicting again when no ``gpu`` is given.
    """
    if gpu is not None:
        inp = replace(inp, tflops=gpu.tflops16, bandwidth_gbs=gpu.bandwidth_gbs, compute_capability=gpu.compute_capability)
    pred = prediction if prediction is not None and gpu is None else predict_inputs(inp, arch)
    name = gpu.name if gpu is not None else "unnamed GPU"
    if gpu is not None and gpu.name in SPEED_MEASURED_CARDS:
        basis = f"measured: constants fitted on fmllm's runner on {' and '.join(SPEED_MEASURED_CARDS)}"
    else:
        tf, bw = inp.tflops or DEFAULT_TFLOPS, inp.bandwidth_gbs or DEFAULT_BANDWIDTH_GBS
        basis = (f"estimate: GPU time scaled from the card's specifications ({tf:g} dense 16-bit TFLOP/s, "
                 f"{bw:g} GB/s) against the H100/H200 measurements; host overhead as measured there")
    return TimeEstimate(tokens_per_second=pred.tokens_per_second, seconds_per_step=pred.seconds_per_step,
                        startup_s=pred.startup_seconds, steps=int(steps), tokens_per_step=pred.tokens_per_step,
                        eta_s=pred.eta_seconds(steps), card=name, basis=basis)


# --------------------------------------------------------------------------------------------
# From a config
# --------------------------------------------------------------------------------------------


def inputs_from_view(
    view: FineTuneConfig,
    *,
    recipe: str | None = None,
    n_gpus: int = 1,
    mode: str = "single",
    seq_len: int | None = None,
    micro_batch: int | None = None,
    gpu: GpuCard | None = None,
) -> tuple[PlanInputs, list[str]]:
    """Plain inputs from the typed config view, and notes on assumptions made.

    ``gpu`` (a gpudb card) sets the compute capability (cuBLAS workspace) and the speed figures.
    """
    t, q, lo, fm = view.training, view.quantization, view.lora, view.fmllm
    notes: list[str] = []
    seq = seq_len if seq_len is not None else t.max_seq_length
    if seq is None:
        # A null max_seq_length runs at fmllm's default (plan.py): read it from the config model, where it
        # is set once (deferred import: the caller built ``view`` with that module already).
        from fmllm_tui.config import TrainingSettings

        seq = TrainingSettings.model_fields["max_seq_length"].default
        notes.append(f"training.max_seq_length is not set: planned for {seq} tokens (fmllm's default); set it")
    mb = micro_batch if micro_batch is not None else t.per_device_train_batch_size
    rec = recipe or fm.memory_recipe
    if mode == "auto":
        mode = "single"  # the runner trains on one GPU unless distributed.mode is ddp
    _check_choices(rec, mode)
    gc_kwargs = t.gradient_checkpointing_kwargs or {}
    if t.gradient_checkpointing and gc_kwargs.get("use_reentrant") is True:
        notes.append("reentrant checkpointing: planned like non-reentrant (same saved hidden states)")
    inp = PlanInputs(
        seq_len=int(seq),
        micro_batch=int(mb),
        grad_accum=int(t.gradient_accumulation_steps),
        gradient_checkpointing=bool(t.gradient_checkpointing),
        use_4bit=bool(q.use_4bit),
        quant_type=q.bnb_4bit_quant_type,
        nested_quant=bool(q.use_nested_quant),
        compute_dtype=q.bnb_4bit_compute_dtype,
        use_adapter=bool(view.use_adapter),
        lora_r=int(lo.r),
        lora_targets=lo.target_modules if isinstance(lo.target_modules, str) else tuple(lo.target_modules),
        lora_dropout=float(lo.dropout),
        optim=t.optim,
        recipe=rec,
        attn=fm.attn_implementation,
        loss=fm.loss,
        offload_embeddings=fm.offload_embeddings,
        compiled={"on": True, "off": False}.get(fm.compile, False if fm.trust_remote_code else None),
        packing=bool(t.packing),
        mode=mode,
        n_gpus=int(n_gpus),
        cpu_offload=bool(fm.distributed.cpu_offload),
        tflops=gpu.tflops16 if gpu else None,
        bandwidth_gbs=gpu.bandwidth_gbs if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
    )
    return inp, notes


def predict(
    view: FineTuneConfig,
    arch: dict[str, Any] | ArchSpec,
    *,
    recipe: str | None = None,
    n_gpus: int = 1,
    mode: str = "single",
    seq_len: int | None = None,
    micro_batch: int | None = None,
    gpu: GpuCard | None = None,
) -> Prediction:
    """Predict the peak memory of training ``view`` on the model ``arch`` (config.json dict).

    ``recipe`` overrides ``fmllm.memory_recipe`` (fmllm | plain | noprep | lean); ``mode`` is
    single | ddp | fsdp (auto = single) over ``n_gpus``; ``seq_len``/``micro_batch`` override the
    config's; ``gpu`` (a gpudb card) refines the allocator rule and the speed estimate.
    Raises ArchitectureError for a config.json it cannot use and ValueError for bad arguments.
    """
    inp, notes = inputs_from_view(
        view, recipe=recipe, n_gpus=n_gpus, mode=mode, seq_len=seq_len, micro_batch=micro_batch, gpu=gpu
    )
    pred = predict_inputs(inp, arch)
    pred.notes[:0] = notes
    return pred


def vary(inp: PlanInputs, **changes: Any) -> PlanInputs:
    """A copy of ``inp`` with some fields changed (thin wrapper over dataclasses.replace)."""
    return replace(inp, **changes)


# --------------------------------------------------------------------------------------------
# Measured points (bench/memory_points.json)
# --------------------------------------------------------------------------------------------


def point_inputs(point: dict[str, Any]) -> PlanInputs:
    """Plan inputs of one recorded point (schema 1 of bench/memory_points.json)."""
    st = point["settings"]
    targets = st["target_modules"]
    return PlanInputs(
        seq_len=int(st["max_seq_length"]),
        micro_batch=int(st["micro_batch"]),
        grad_accum=int(st.get("gradient_accumulation_steps", 1)),
        gradient_checkpointing=bool(st["gradient_checkpointing"]),
        use_4bit=bool(st["use_4bit"]),
        quant_type=st.get("quant_type", "nf4"),
        nested_quant=bool(st.get("nested_quant", True)),
        compute_dtype=st.get("compute_dtype", "bfloat16"),
        use_adapter=bool(st.get("use_adapter", True)),
        lora_r=int(st["lora_r"]),
        lora_targets=targets if isinstance(targets, str) else tuple(targets),
        lora_dropout=float(st["lora_dropout"]),
        optim=st["optim"],
        recipe=point["recipe"],
        attn=st.get("attn_implementation", "sdpa"),
        loss=st.get("loss", "auto"),
        offload_embeddings=st.get("offload_embeddings", "off"),
        liger_layers=st.get("liger_layers"),
        compiled=bool(st.get("compiled", False)),
        padded=st.get("padded"),
        mode=st.get("mode", "single"),
        n_gpus=int(st.get("n_gpus", 1)),
        expandable_segments="expandable_segments:true" in str((point.get("env") or {}).get("alloc_conf") or "").lower(),
        compute_capability=_cc_of(str((point.get("env") or {}).get("gpu") or "")),
    )


def _cc_of(gpu_name: str) -> tuple[int, int] | None:
    """Compute capability of a recorded point's GPU (via the GPU database), None when unknown."""
    from fmllm_tui import gpudb  # deferred: only the points loader needs it

    card = gpudb.match_nvml(gpu_name) if gpu_name else None
    return card.compute_capability if card else None


def load_points(path: str | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The recorded points and their architectures from bench/memory_points.json."""
    import json
    from pathlib import Path

    p = Path(path) if path else Path(__file__).resolve().parent.parent / "bench" / "memory_points.json"
    doc = json.loads(p.read_text(encoding="utf-8"))
    if doc.get("schema") != 1:
        raise ValueError(f"{p}: unknown schema {doc.get('schema')!r}; this fmllm reads schema 1")
    return doc["points"], doc["architectures"]
