"""GPU kernels for the native decoder, each beside a plain-torch reference that keeps CPU and MPS working
and the kernel honest. Triton is optional: installs without it import this package and use the references."""

from dsocr_cli.engines.kernels.paged_attention import (
    paged_decode_attention,
    reference_paged_decode_attention,
    triton_decode_ready,
)

__all__ = ["paged_decode_attention", "reference_paged_decode_attention", "triton_decode_ready"]
