"""Device and dtype choice shared by every torch engine, with one-line errors that name the fix."""

from __future__ import annotations

from dsocr_cli.errors import SetupError, UsageError

DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "fp32": "float32",
    "float32": "float32",
}


def resolve_device(requested: str) -> str:
    """`auto` takes cuda, then mps, then cpu; a device asked for by name that is not there fails
    at once, saying why (a CPU-only torch build, no GPU seen)."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        build = torch.version.cuda
        why = (
            f"torch {torch.__version__} was built for CUDA {build} but sees no GPU"
            if build
            else (f"torch {torch.__version__} is a CPU-only build")
        )
        raise SetupError(f"--device cuda: {why}", "install a CUDA build (scripts/install.sh) or use --device cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SetupError("--device mps: Apple's Metal backend is not available here", "use --device cpu")
    if requested not in ("cuda", "cpu", "mps"):
        raise UsageError(f"unknown device {requested!r}", "choose auto, cuda, cpu or mps")
    return requested


def resolve_dtype(requested: str, device: str):
    """bf16 on CUDA by default, float32 on CPU (bf16 matmuls there are slow), float16 on MPS."""
    import torch

    if requested == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device, torch.float32)
    name = DTYPES.get(requested.lower())
    if name is None:
        raise UsageError(f"unknown dtype {requested!r}", "choose auto, bf16, fp16 or fp32")
    return getattr(torch, name)


def device_stats(engine: str, device: str, dtype) -> dict:
    """What ran where, and the peak GPU memory it took: the run summary's `engine` entry."""
    import torch

    info = {"engine": engine, "device": device, "dtype": str(dtype).replace("torch.", "")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return info
