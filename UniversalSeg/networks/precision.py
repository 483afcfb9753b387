"""Devices, precisions and memory formats: the one place that decides how the network runs.

- ``resolve_device("auto")``: CUDA when present, else CPU; ``"mps"`` (Apple's GPUs) only where
  ``torch.backends.mps.is_available()`` (never chosen by ``auto``).
- ``resolve_precision("auto", device)``: bf16 on CUDA GPUs that support it (fp16 otherwise), bf16
  on CPUs with AMX-bf16 or AVX512-bf16 (fast oneDNN kernels), fp32 elsewhere.
- ``autocast(device, precision)``: ``torch.autocast`` for bf16/fp16, a no-op for fp32.
- ``prepare_model(model, device)``: moves it, enables cuDNN autotuning on CUDA and uses the
  ``channels_last_3d`` memory format where it pays (cuDNN and oneDNN 3D convolutions run
  NDHWC natively; the fusion sites then see voxels as tokens without a copy); on the CPU its 3D
  convolutions run on oneDNN whenever no gradient is taken (``onednn_convolution``).
"""
from __future__ import annotations

import contextlib

import torch
from ..errors import InputError
from .onednn_convolution import use_onednn_convolutions

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {str(device)!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is visible to PyTorch; "
                         "use --device cpu (or auto)")
    if device.type == "mps" and not mps_available():
        raise InputError("device 'mps' was asked for but this PyTorch has no Apple GPU (MPS) backend "
                         "available; use --device cpu (or auto)")
    return device


def mps_available() -> bool:
    """Apple's Metal (MPS) backend is built into this torch and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cpu_supports_fast_bf16() -> bool:
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return bool(amx or avx512_bf16)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise InputError("fp16 is for GPUs; on CPU use bf16 (fast with AMX) or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_supports_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast context for the resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last_3d is the layout cuDNN and oneDNN run natively; on mps the default one (not measured here)
    return torch.contiguous_format if device.type == "mps" else torch.channels_last_3d


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = model.to(device=device, memory_format=memory_format(device))
    if device.type == "cpu":
        use_onednn_convolutions(model)  # without gradients only; training keeps PyTorch's choice
    return model


def prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    fmt = memory_format(device)
    if x.device == device and x.is_contiguous(memory_format=fmt) and x.is_contiguous():
        # one channel: both layouts are the same bytes, yet ``to`` copies them (a whole volume for
        # the predictor); the same memory with the layout's strides instead
        return x.as_strided(x.shape, torch.empty(x.shape, memory_format=fmt, device="meta").stride())
    return x.to(device=device, memory_format=fmt, non_blocking=True)
