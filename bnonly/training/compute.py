"""How the arithmetic runs: what --precision auto means on this device, and the Compute settings.

Compute carries the device, the autocast precision and the memory layout to every training step,
evaluation and benchmark; the CPU checks here read /proc/cpuinfo, so a CPU that would emulate a lower
precision is named before a run crawls.
"""

import contextlib
import dataclasses

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What --precision auto means: a lower precision only where its accuracy parity with fp32 was measured and
# it is faster (BENCHMARKS.md). On a CPU with AMX (bf16 matrix tiles) bf16 autocast ran the BN-only step
# 1.6-1.8x faster than fp32, and over 11 seeds its 3-epoch val accuracy was 0.09 points below fp32's on
# average (the mean is within the 0.5 allowed; the 95 % interval, -0.81 to +0.63, is wide). On a CPU with
# AVX512-BF16 but no AMX it was 0.87 points below (3 seeds), so those stay fp32, as do CPUs that emulate
# bf16. Parity was measured with SGD; the other first-order optimizers take the same gradients. L-BFGS's
# line search compares loss values between evaluations and was not measured: fp32. On an H200 bf16 kept
# its accuracy but was slower than fp32 (the eager step seems launch-bound), so CUDA stays fp32.
FP32_OPTIMIZERS = ("lbfgs",)  # auto keeps these in fp32


# The x86 instructions that run a precision natively; without them torch emulates it. On an AVX2-only CPU
# (AMD EPYC Zen 3) bf16 autocast ran the BN-only step at 20 img/s against 321 in fp32 (BENCHMARKS.md).
NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def cpu_flags() -> set:
    """This CPU's x86 feature flags, from /proc/cpuinfo (Linux); empty where unreadable or not x86."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 matrix tiles: torch's check, else the kernel's CPU flags (Linux)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if check is not None:
        return bool(check())
    return "amx_bf16" in cpu_flags()


def cpu_emulates(precision: str) -> bool:
    """Whether this x86 CPU lacks the instructions for `precision` (bf16, fp16), so torch emulates it, many
    times slower than fp32. False for fp32 and where the flags cannot be read (other CPUs, other systems)."""
    flags = cpu_flags()
    return bool(flags) and precision in NATIVE_CPU_FLAGS and not flags.intersection(NATIVE_CPU_FLAGS[precision])


def resolve_precision(precision: str, device: torch.device, optimizer: str = "sgd") -> str:
    """The precision `auto` stands for on this device with this optimizer; explicit settings are kept."""
    if precision != "auto":
        return precision
    if device.type == "cpu" and optimizer not in FP32_OPTIMIZERS and cpu_has_amx():
        return "bf16"
    return "fp32"


@dataclasses.dataclass(frozen=True)
class Compute:
    """How the arithmetic runs: the device, the autocast precision and the activation memory layout."""
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16, already resolved
    channels_last: bool = False

    def autocast(self):
        """bf16/fp16 convolutions and matmuls; BatchNorm keeps fp32 statistics and parameters, the loss is fp32.
        No autocast at all for fp32 (older torch rejects autocast on some devices even when disabled)."""
        if self.precision not in AUTOCAST_DTYPES:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the device, in the chosen memory layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, batch: torch.Tensor, pipeline) -> torch.Tensor:
        """A batch of a split, or of `pipeline.augment`'s output -> the normalised float model input the data's
        pipeline (data.ImageInputs, audio.AudioInputs) prepares; images in the chosen memory layout."""
        x = pipeline.prepare(batch)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def emulated(self) -> bool:
        """Whether this run's precision is emulated here: a lower precision on a CPU without its instructions."""
        return self.device.type == "cpu" and cpu_emulates(self.precision)

    def grad_scaler(self):
        """Loss scaling for fp16; None for the other precisions, which need none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
