"""The GPU as NVML sees it: devices, memory, processes, driver. No torch here.

Everything goes through one boundary, :func:`nvml_module`, which returns the real ``pynvml``
(from nvidia-ml-py) or, when ``FMLLM_FAKE_NVML`` names a JSON file, a fake with the same calls
built from that file. Tests on machines without a GPU use the fake; the real path runs on the
GPU machine (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GpuProcess:
    pid: int
    name: str
    used_bytes: int


@dataclass
class GpuDevice:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    compute_capability: tuple[int, int]
    uuid: str = ""
    processes: list[GpuProcess] = field(default_factory=list)
    utilization_pct: int | None = None

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic needs Ampere (sm_80) or newer."""
        return self.compute_capability >= (8, 0)


@dataclass
class GpuInventory:
    """What NVML reported, or why it could not."""

    ok: bool
    devices: list[GpuDevice] = field(default_factory=list)
    driver_version: str | None = None
    cuda_driver_version: tuple[int, int] | None = None  # highest CUDA the driver supports
    nvml_version: str | None = None
    error: str | None = None
    source: str = "nvml"  # nvml | fake

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


class _FakeNvmlError(Exception):
    pass


class FakeNvml:
    """A stand-in for the pynvml module built from a JSON description (tests only).

    JSON: {"driver": "550.54", "cuda": 12040, "init_error": null | "message",
           "devices": [{"name", "total", "used", "cc": [8, 6], "uuid", "util",
                        "processes": [{"pid", "name", "used"}]}]}
    """

    NVMLError = _FakeNvmlError

    def __init__(self, spec: dict[str, Any]):
        self._spec = spec

    def nvmlInit(self) -> None:
        if self._spec.get("init_error"):
            raise _FakeNvmlError(self._spec["init_error"])

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._spec.get("driver", "550.54.15"))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._spec.get("cuda", 12040))

    def nvmlSystemGetNVMLVersion(self) -> str:
        return str(self._spec.get("nvml", "12.550.54"))

    def nvmlDeviceGetCount(self) -> int:
        return len(self._spec.get("devices", []))

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        devs = self._spec.get("devices", [])
        if i >= len(devs):
            raise _FakeNvmlError("Invalid Argument")
        return devs[i]

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return str(h["name"])

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h.get("uuid", "GPU-fake"))

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        class M:
            total = int(h["total"])
            used = int(h.get("used", 0))
            free = int(h["total"]) - int(h.get("used", 0))

        return M()

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        cc = h.get("cc", [8, 6])
        return int(cc[0]), int(cc[1])

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        out = []
        for p in h.get("processes", []):
            class P:
                pid = int(p["pid"])
                usedGpuMemory = int(p["used"])

            out.append(P())
        return out

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        return []

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        class U:
            gpu = int(h.get("util", 0))
            memory = 0

        return U()

    def process_name(self, pid: int) -> str | None:
        for d in self._spec.get("devices", []):
            for p in d.get("processes", []):
                if int(p["pid"]) == pid:
                    return str(p.get("name", ""))
        return None


def nvml_module() -> Any:
    """The NVML boundary: real pynvml, or the fake named by FMLLM_FAKE_NVML."""
    fake = os.environ.get("FMLLM_FAKE_NVML")
    if fake:
        return FakeNvml(json.loads(Path(fake).read_text()))
    import pynvml  # nvidia-ml-py

    return pynvml


def _process_name(nv: Any, pid: int) -> str:
    if isinstance(nv, FakeNvml):
        name = nv.process_name(pid)
        if name:
            return name
    try:
        import psutil

        return " ".join(psutil.Process(pid).cmdline()[:3]) or psutil.Process(pid).name()
    except Exception:  # the process may belong to another container or be gone
        return "?"


def probe() -> GpuInventory:
    """Ask NVML for the driver and every visible device. Never raises."""
    try:
        nv = nvml_module()
    except Exception as e:  # pynvml missing or fake file unreadable
        return GpuInventory(ok=False, error=f"NVML is not available: {e}")
    source = "fake" if isinstance(nv, FakeNvml) else "nvml"
    try:
        nv.nvmlInit()
    except Exception as e:
        return GpuInventory(ok=False, error=_explain_init_error(e), source=source)
    try:
        inv = GpuInventory(ok=True, source=source)
        inv.driver_version = _s(nv.nvmlSystemGetDriverVersion())
        try:
            v = int(nv.nvmlSystemGetCudaDriverVersion())
            inv.cuda_driver_version = (v // 1000, (v % 1000) // 10)
        except Exception:
            inv.cuda_driver_version = None
        try:
            inv.nvml_version = _s(nv.nvmlSystemGetNVMLVersion())
        except Exception:
            pass
        visible = _visible_indices(nv.nvmlDeviceGetCount())
        for i in visible:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            procs = []
            try:
                for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                    used = int(getattr(p, "usedGpuMemory", 0) or 0)
                    procs.append(GpuProcess(pid=int(p.pid), name=_process_name(nv, int(p.pid)), used_bytes=used))
            except Exception:
                pass
            try:
                util = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                util = None
            inv.devices.append(
                GpuDevice(
                    index=i,
                    name=_s(nv.nvmlDeviceGetName(h)),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    used_bytes=int(mem.used),
                    compute_capability=tuple(nv.nvmlDeviceGetCudaComputeCapability(h)),  # type: ignore[arg-type]
                    uuid=_s(nv.nvmlDeviceGetUUID(h)),
                    processes=procs,
                    utilization_pct=util,
                )
            )
        return inv
    except Exception as e:
        return GpuInventory(ok=False, error=f"NVML query failed: {e}", source=source)
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cuda_visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset (every GPU is visible), else its
    entries up to the first that CUDA rejects (``-1`` or a negative index ends the list, as in
    CUDA itself), so ``""`` and ``-1`` both mean no GPU. The one parser of the variable
    (the checks, the launch and the runner's NVML sampler read it)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return None
    out: list[str] = []
    for item in (x.strip() for x in cvd.split(",")):
        if not item or item.startswith("-"):
            break
        out.append(item)
    return out


def _visible_indices(count: int) -> list[int]:
    """The NVML indices CUDA will see (UUID lists are kept whole)."""
    items = cuda_visible_devices()
    if items is None:
        return list(range(count))
    if all(x.isdigit() for x in items):
        out = []
        for x in items:
            if int(x) < count:
                out.append(int(x))
            else:
                break  # CUDA stops at the first invalid index
        return out
    return list(range(count))


def visible_device(local_rank: int = 0) -> tuple[int | None, str | None]:
    """(NVML index, UUID) of the GPU CUDA sees as ``cuda:local_rank`` (NVML ignores
    CUDA_VISIBLE_DEVICES, so the mapping is done here, without touching CUDA); (None, None)
    when the variable hides every GPU."""
    items = cuda_visible_devices()
    if items is None:
        return local_rank, None
    if not items:
        return None, None
    entry = items[local_rank] if local_rank < len(items) else items[0]
    if entry.isdigit():
        return int(entry), None
    return None, entry if entry.startswith("GPU-") else None


def nvml_session() -> Any:
    """The NVML module (real or fake), initialised: the way into NVML for samplers that keep
    it open (probe() opens and shuts it per reading)."""
    nv = nvml_module()
    nv.nvmlInit()
    return nv


def _explain_init_error(e: Exception) -> str:
    text = str(e) or type(e).__name__
    low = text.lower()
    if "driver not loaded" in low or "libnvidia-ml" in low or "not found" in low or "shared library" in low:
        return f"no NVIDIA driver found ({text})"
    if "insufficient permissions" in low or "no permission" in low:
        return f"NVML refused access ({text}); run as a user allowed to use the GPU"
    return f"NVML could not start ({text})"


def torch_build_info() -> dict[str, Any]:
    """torch's version and CUDA build, read from its files without importing torch."""
    import importlib.util
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return {"installed": False}
    info: dict[str, Any] = {"installed": True, "version": version, "cuda": None, "source": "metadata"}
    try:
        spec = importlib.util.find_spec("torch")  # locates the package; does not import it
        origin = spec.origin if spec else None
        if origin:
            text = (Path(origin).parent / "version.py").read_text()
            for line in text.splitlines():
                if line.startswith("cuda") and "=" in line:
                    val = line.split("=", 1)[1].strip().strip("'\"")
                    info["cuda"] = None if val in ("None", "") else val
                    info["source"] = "torch/version.py"
    except (OSError, ValueError):
        pass
    if "+cpu" in version:
        info["cuda"] = None
    return info
