"""The machine a search runs on: its accelerator, devices, cores, half precisions and nodes,
detected once and passed down as one frozen value."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

from autotune._cluster import Node, placement
from autotune._errors import UserError


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the local machine offers to trials.

    Attributes:
        accelerator: DeepSpeed's accelerator name ("cpu", "cuda", ...).
        devices: How many ranks fit: GPUs, or CPU cores on the CPU accelerator.
        cores: CPU cores this process may use.
        fp16: Whether the accelerator supports fp16.
        bf16: Whether the accelerator supports bf16.
        device_name: The accelerator's model, for reports ("" on CPU).
        native_half: The half precisions the hardware computes natively ("bf16", "fp16"),
            as opposed to those it supports by conversion (a CPU without avx512_bf16 or AMX
            runs bf16 several times slower than fp32); the start-up tries the reference in
            each (see ``native_half_precisions``).
        environment: Variables DeepSpeed needs set differently here for its ops to build
            (see ``arch_list_deepspeed_can_parse``); trials run with them and the exported
            launch command sets them.
        nodes: The hostfile's nodes when trials may span several (``--hostfile``), this
            machine first; empty for this machine alone. Every node is taken to be like this
            one (the study's machine check holds for each worker, not for each node).
        launcher: How a node other than this one is reached (``ssh`` or ``srun``).
        device_ids: The accelerator indices (or, on CPU, the cores) this search's trials use
            (``--devices``), so several workers share one machine without sharing devices;
            empty for all of them.
        cxx: Whether a C++ compiler is on the PATH (torch.compile's CPU code needs one).
    """

    accelerator: str
    devices: int
    cores: int
    fp16: bool
    bf16: bool
    device_name: str = ""
    environment: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    native_half: tuple[str, ...] = ()
    nodes: tuple[Node, ...] = ()
    launcher: str = "ssh"
    device_ids: tuple[int, ...] = ()
    cxx: bool = True

    def local_device_ids(self, ranks: int) -> list[int]:
        """The device indices this machine's ``ranks`` ranks run on (DeepSpeed's launcher sets
        ``CUDA_VISIBLE_DEVICES`` from them)."""
        return list(self.device_ids[:ranks]) if self.device_ids else list(range(ranks))

    @property
    def slots(self) -> int:
        """How many ranks a trial may have: the hostfile's slots, or this machine's devices."""
        return sum(node.slots for node in self.nodes) if self.nodes else self.devices

    def local_ranks(self, processes: int) -> int:
        """The most ranks of a ``processes``-rank trial on one node (the first node's share)."""
        return placement(self.nodes, min(processes, self.slots))[0][1]

    def spans_nodes(self, processes: int) -> bool:
        """Whether a trial of ``processes`` ranks needs more than this machine's slots."""
        return len(self.nodes) > 1 and processes > self.nodes[0].slots

    def describe(self) -> str:
        if self.accelerator == "cpu":
            model = cpu_model()
            text = f"cpu, {self.cores} cores" + (f" ({model})" if model else "")
        else:
            name = f" ({self.device_name})" if self.device_name else ""
            text = f"{self.devices} x {self.accelerator}{name}, {self.cores} cpu cores"
        if len(self.nodes) > 1:
            text += f"; {len(self.nodes)} nodes, {self.slots} slots"
        return text


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, or "" where that is not available."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where that is not available)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


_CPU_HALF_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
"""The x86 instructions that compute each half precision natively; without them PyTorch
converts to fp32 and back around every operation."""
_CUDA_HALF_MAJOR = {"bf16": 8, "fp16": 7}
"""The first CUDA compute capability (major) with tensor cores for each half precision
(Ampere for bf16, Volta for fp16); PyTorch emulates bf16 on older GPUs."""


def native_half_precisions(
    accelerator: str, flags: frozenset[str], cuda_major: int | None
) -> tuple[str, ...]:
    """The half precisions that ``accelerator`` computes natively: on CPU by its feature
    ``flags`` (`cpu_flags`), on CUDA by its compute capability's major version; none claimed
    for other accelerators."""
    if accelerator == "cpu":
        return tuple(p for p, needs in _CPU_HALF_FLAGS.items() if flags.intersection(needs))
    if accelerator == "cuda" and cuda_major is not None:
        return tuple(p for p, major in _CUDA_HALF_MAJOR.items() if cuda_major >= major)
    return ()


def parse_devices(text: str) -> tuple[int, ...]:
    """``--devices``: indices and ranges, ``"0,1"`` or ``"4-7"`` or ``"0,2-3"``, in order.

    Raises:
        ValueError: Not such a list, or an index given twice.
    """
    ids: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"expected indices such as 0,1 or 4-7, got {text!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"the range {part.strip()} runs backwards")
        ids.extend(range(first, last + 1))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{text!r} names an index twice")
    return tuple(ids)


def with_devices(machine: Machine, device_ids: tuple[int, ...]) -> Machine:
    """``machine`` restricted to ``device_ids``: accelerator indices, or on CPU cores, to which
    this process (and so every rank it launches) is then bound.

    Raises:
        UserError: An index this machine does not have (or this process may not use).
    """
    if machine.accelerator == "cpu":
        allowed = sorted(os.sched_getaffinity(0))
        missing = [i for i in device_ids if i not in allowed]
        if missing:
            raise UserError(
                f"--devices {','.join(map(str, device_ids))}: this process may use cores "
                f"{_ranges(allowed)}, not {','.join(map(str, missing))}."
            )
        os.sched_setaffinity(0, device_ids)
        count = len(device_ids)
        return dataclasses.replace(machine, devices=count, cores=count, device_ids=device_ids)
    missing = [i for i in device_ids if i >= machine.devices]
    if missing:
        raise UserError(
            f"--devices {','.join(map(str, device_ids))}: this machine has {machine.devices} "
            f"{machine.accelerator} devices (0-{machine.devices - 1}), not "
            f"{','.join(map(str, missing))}."
        )
    return dataclasses.replace(machine, devices=len(device_ids), device_ids=device_ids)


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    parts: list[str] = []
    for i in ids:
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = parts[-1].split("-")[0] + f"-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_ARCH_VARIANT = re.compile(r"^(\d+\.\d+)[a-z]+(\+PTX)?$", re.IGNORECASE)


def arch_list_deepspeed_can_parse(value: str) -> str:
    """``TORCH_CUDA_ARCH_LIST`` without architecture variant suffixes ("9.0a" -> "9.0").

    DeepSpeed's op builders read every entry as integers and fail on PyTorch's variant
    targets (deepspeedai/DeepSpeed#7589; the image of our H100 machine sets "9.0a"). The plain
    target builds code that runs on the same GPU; the ops DeepSpeed builds use no
    variant-only instructions. Entries keep their order; duplicates left by the strip go.
    """
    kept: list[str] = []
    for entry in value.replace(",", ";").replace(" ", ";").split(";"):
        if not entry:
            continue
        match = _ARCH_VARIANT.match(entry)
        plain = match.group(1) + (match.group(2) or "") if match else entry
        if plain not in kept:
            kept.append(plain)
    return ";".join(kept)


def deepspeed_environment(accelerator: str, environ: dict[str, str]) -> dict[str, str]:
    """The variables to change in ``environ`` before DeepSpeed builds ops on ``accelerator``."""
    arch_list = environ.get("TORCH_CUDA_ARCH_LIST")
    if accelerator == "cpu" or not arch_list:
        return {}
    parsable = arch_list_deepspeed_can_parse(arch_list)
    return {} if parsable == arch_list else {"TORCH_CUDA_ARCH_LIST": parsable}


def detect_machine() -> Machine:
    """Ask DeepSpeed which accelerator it would use here and what it supports."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed would pick, without its warning
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    name = accelerator.device_name()
    cores = available_cores()
    devices = cores if name == "cpu" else accelerator.device_count()
    cuda_major = torch.cuda.get_device_capability(0)[0] if name == "cuda" else None
    supported = {"bf16": accelerator.is_bf16_supported(), "fp16": accelerator.is_fp16_supported()}
    native = native_half_precisions(name, cpu_flags(), cuda_major)
    return Machine(
        accelerator=name,
        devices=devices,
        cores=cores,
        fp16=bool(supported["fp16"]),
        bf16=bool(supported["bf16"]),
        device_name=torch.cuda.get_device_name(0) if name == "cuda" else "",
        environment=deepspeed_environment(name, dict(os.environ)),
        native_half=tuple(p for p in native if supported[p]),
        cxx=any(shutil.which(name) for name in ("c++", "g++", "clang++")),
    )
