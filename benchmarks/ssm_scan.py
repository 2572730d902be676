"""Benchmark the selective scan: chunked pure PyTorch vs the sequential loop (and mamba-ssm).

Usage::

    python benchmarks/ssm_scan.py [--lengths 64 128 ... 4096] [--repeats 3] [--threads 1]

For every length ``L`` the same inputs (batch 2, 64 channels, state 16, float32 by default) go
through :func:`brainfm.models.ssm.selective_scan_ref` (a Python loop over time) and
:func:`brainfm.models.ssm.selective_scan_chunked`, forward only and forward plus backward. The
table gives the median times, the speed-up, the chunked scan's time per element
(``batch * dim * L * d_state``; flat when the cost grows linearly in ``L``) and the largest
difference between the two outputs. On a CUDA machine the chunked scan is also timed on the GPU,
and the mamba-ssm kernel when it imports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainfm.models import ssm  # noqa: E402
from brainfm.models.ssm import selective_scan_chunked, selective_scan_ref  # noqa: E402


def _inputs(b: int, d: int, n: int, length: int, dtype: torch.dtype,
            device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(length)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    A = -torch.exp(torch.randn(d, n, generator=g)).to(dtype).to(device)
    return [r(b, d, length), r(b, d, length) - 2.0, A, r(b, n, length), r(b, n, length),
            r(d), r(b, d, length), r(d)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time in ms after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _call(scan: Callable[..., torch.Tensor], ins: list[torch.Tensor]) -> torch.Tensor:
    u, delta, A, B, C, D, z, db = ins
    return scan(u, delta, A, B, C, D=D, z=z, delta_bias=db, delta_softplus=True)


def _fwd(scan: Callable[..., torch.Tensor], ins: list[torch.Tensor]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return _call(scan, ins)
    return run


def _fwd_bwd(scan: Callable[..., torch.Tensor], ins: list[torch.Tensor]) -> Callable[[], object]:
    leaves = [t.detach().requires_grad_() for t in ins]

    def run() -> object:
        for t in leaves:
            t.grad = None
        out = _call(scan, leaves)
        out.sum().backward()
        return out
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status 0.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+",
                   default=[64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: leave torch's default)")
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    b, d, n = args.batch, args.dim, args.state
    print(f"selective scan, batch={b} dim={d} d_state={n} {args.dtype}, CPU threads="
          f"{torch.get_num_threads()}, median of {args.repeats}; times in ms")
    head = (f"{'L':>6} {'loop fwd':>10} {'chunk fwd':>10} {'x':>6} "
            f"{'ns/elem':>8} {'max|diff|':>10}")
    if not args.no_backward:
        head += f" {'loop f+b':>10} {'chunk f+b':>10} {'x':>6} {'ns/elem':>8}"
    print(head)
    for length in args.lengths:
        ins = _inputs(b, d, n, length, dtype, "cpu")
        elems = b * d * length * n
        t_loop = _time(_fwd(selective_scan_ref, ins), args.repeats, "cpu")
        t_chunk = _time(_fwd(selective_scan_chunked, ins), args.repeats, "cpu")
        with torch.no_grad():
            diff = float((_call(selective_scan_ref, ins)
                          - _call(selective_scan_chunked, ins)).abs().max())
        row = (f"{length:>6} {t_loop:>10.2f} {t_chunk:>10.2f} {t_loop / t_chunk:>6.1f} "
               f"{t_chunk * 1e6 / elems:>8.2f} {diff:>10.2e}")
        if not args.no_backward:
            tb_loop = _time(_fwd_bwd(selective_scan_ref, ins), args.repeats, "cpu")
            tb_chunk = _time(_fwd_bwd(selective_scan_chunked, ins), args.repeats, "cpu")
            row += (f" {tb_loop:>10.2f} {tb_chunk:>10.2f} {tb_loop / tb_chunk:>6.1f} "
                    f"{tb_chunk * 1e6 / elems:>8.2f}")
        print(row, flush=True)
    if torch.cuda.is_available():
        print(f"\nCUDA ({torch.cuda.get_device_name()}): chunked pure PyTorch"
              + (" vs mamba-ssm kernel" if ssm.HAS_MAMBA_KERNEL else
                 " (mamba-ssm kernel not installed)"))
        print(f"{'L':>6} {'chunk fwd':>10} {'kernel fwd':>10} {'x':>6} {'max|diff|':>10}")
        for length in args.lengths:
            ins = _inputs(b, d, n, length, torch.float32, "cuda")
            t_chunk = _time(_fwd(selective_scan_chunked, ins), args.repeats, "cuda")
            if ssm.HAS_MAMBA_KERNEL:
                t_kern = _time(_fwd(ssm.selective_scan, ins), args.repeats, "cuda")
                with torch.no_grad():
                    diff = float((_call(ssm.selective_scan, ins)
                                  - _call(selective_scan_chunked, ins)).abs().max())
                print(f"{length:>6} {t_chunk:>10.3f} {t_kern:>10.3f} {t_chunk / t_kern:>6.1f} "
                      f"{diff:>10.2e}")
            else:
                print(f"{length:>6} {t_chunk:>10.3f} {'-':>10} {'-':>6} {'-':>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
