"""quantbench info: this machine's memory, swap, memory pressure, chip and MLX backend."""

from __future__ import annotations

import argparse

from quantbench.core.cpu_blas import blas_status
from quantbench.core.blocks import attention_kernel, elementwise_kernel
from quantbench.core.quant import tile_kernel

from quantbench.core.hardware import detect

from .output import emit

UNKNOWN = "unknown"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="show this machine's memory, chip and MLX backend",
                              description="Show total and available memory, swap, memory pressure, the chip "
                                          "and the MLX backend. What the platform does not report is shown "
                                          "as unknown.")
    p.add_argument("--json", action="store_true", help="print JSON (bytes; null for unknown)")
    p.set_defaults(run=run)


def gb(n: int | None) -> str:
    return UNKNOWN if n is None else f"{n / 2 ** 30:.1f} GB"


def lines(hw, blas, kernels: tuple | None) -> list[str]:
    """The text lines, from what run() asked once (`blas`: blas_status(); `kernels`: the tile, attention and
    elementwise kernels' statuses, None off the CPU), so that they and the JSON say the same."""
    chip = hw.chip or UNKNOWN
    cores = f", {hw.cpu_count} cores" if hw.cpu_count else ""
    swap = UNKNOWN if hw.swap_used is None else (
        "none configured" if not hw.swap_total else f"{gb(hw.swap_used)} used of {gb(hw.swap_total)}")
    pressure = hw.memory_pressure or UNKNOWN
    extra = [f"{label} {gb(v)}" for label, v in (("wired", hw.wired), ("compressed", hw.compressed)) if v is not None]
    if extra:
        pressure += f" ({', '.join(extra)})"
    backend = {"metal": "Metal (GPU)", "cuda": "CUDA (GPU)", "cpu": "CPU only"}[hw.backend]
    mlx = f"MLX {hw.mlx_version}, {backend}" if hw.mlx_version else "MLX not installed"
    if hw.gpu:
        mlx += f", {hw.gpu}"
    working_set = gb(hw.recommended_working_set) if hw.backend == "metal" else "n/a (Metal only)"
    return [
        f"machine      {hw.os} {hw.os_version} ({hw.arch}), {chip}{cores}",
        f"memory       {gb(hw.total_ram)} total, {gb(hw.available_ram)} available",
        f"swap         {swap}",
        f"pressure     {pressure}",
        f"mlx          {mlx}",
        f"working set  {working_set}",
        f"cpu blas     {blas.blas}: {blas.detail}",
        *([f"blas note    {blas.note}"] if blas.note else []),
        *([f"cpu kernel   {kernel_line(kernels[0])}", f"attention    {attention_line(kernels[1])}",
           f"elementwise  {elementwise_line(kernels[2])}"] if kernels else []),
    ]


def kernel_line(kernel) -> str:
    """The quantized layers' CPU product: the tile kernel, or the slices and why."""
    if kernel.state == "ready":
        return f"tile kernel (dequantized inside the product, {tile_kernel.products_named()}), {kernel.detail}"
    return f"slices (dequantized, then multiplied): tile kernel {kernel.state}, {kernel.detail}"


def attention_line(kernel) -> str:
    """The CPU's attention: the C kernel, or MLX's ops and why."""
    if kernel.state == "ready":
        return f"attention kernel (scores kept in cache), {kernel.detail}"
    return f"MLX's ops: attention kernel {kernel.state}, {kernel.detail}"


def elementwise_line(kernel) -> str:
    """The CPU's activations and per-head norms: the C kernel on every core, or MLX's ops and why."""
    if kernel.state == "ready":
        return f"elementwise kernel (activations, norms and rotary embedding on every core), {kernel.detail}"
    return f"MLX's ops (one thread a pass): elementwise kernel {kernel.state}, {kernel.detail}"


def tile_kernel_status():
    tile_kernel.ready()  # built here once, as the first quantized product would
    return tile_kernel.status()


def attention_kernel_status():
    attention_kernel.ready()  # built here once, as the first attention would
    return attention_kernel.status()


def elementwise_kernel_status():
    elementwise_kernel.ready()  # built here once, as the first activation would
    return elementwise_kernel.status()


def run(args: argparse.Namespace) -> int:
    hw = detect()
    blas = blas_status()  # each asked once: the JSON and the lines say the same
    kernels = (tile_kernel_status(), attention_kernel_status(), elementwise_kernel_status()) \
        if hw.backend == "cpu" else None
    reported = {"cpu_tile_kernel": kernels[0].to_dict(), "cpu_attention_kernel": kernels[1].to_dict(),
                "cpu_elementwise_kernel": kernels[2].to_dict()} if kernels else {}
    emit(hw.to_dict() | {"memory_pressure": hw.memory_pressure, "cpu_blas": blas.to_dict()} | reported,
         args.json, lines(hw, blas, kernels))
    return 0
