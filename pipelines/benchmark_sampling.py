"""Benchmark: wall time and network evaluations per 320 x 320 slice for each sampler.

Also counts the UNet's FLOPs per forward pass (torch.utils.flop_counter) and compares the
achieved FLOP/s with a matrix-multiply peak measured on the same machine, in fp32 and bf16.
The network's weights do not change its speed, so a freshly initialised network is timed.

Usage:
    python pipelines/benchmark_sampling.py [--preset small] [--size 320] [--device auto]
        [--precision bf16 fp32] [--json out.json] [--quick]

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from mrisr.diffusion import PartialDiffusionInferer
from mrisr.inference import resolve_device
from mrisr.networks import SR3UNet, network_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matrix product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def unet_flops(net: torch.nn.Module, size: int, device: torch.device) -> int:
    x = torch.randn(1, 2, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([0.5], device=device))
    return int(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--batch", type=int, default=1, help="slices per batch")
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="only the fast samplers")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = SR3UNet(**network_config(args.preset)).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    flops = unet_flops(net, args.size, device)
    peaks = {p: matmul_peak(device, torch.bfloat16 if p == "bf16" else torch.float32) for p in args.precision}
    lowres = torch.randn(args.batch, 1, args.size, args.size, device=device).clamp(-1, 1)

    configs = [("regression", "ancestral", None), ("partdiff", "ddim", 4), ("partdiff", "ddim", 8),
               ("partdiff", "ancestral", 25), ("partdiff", "ancestral", 50), ("sr3", "ancestral", None)]
    if args.quick:
        configs = configs[:3]
    rows = []
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else None
        for method, sampler, steps in configs:
            objective = {"regression": "regression", "sr3": "sr3"}.get(method, "sr3")
            inferer = PartialDiffusionInferer(objective=objective, autocast_dtype=dtype)
            gens = [torch.Generator(device).manual_seed(i) for i in range(args.batch)]
            # warm-up pass, one evaluation
            inferer.sample(lowres, net, method="partdiff" if method != "regression" else "regression",
                           sampler="ddim", steps=1, generators=gens)
            sync(device)
            t = time.perf_counter()
            inferer.sample(lowres, net, method=method, sampler=sampler, steps=steps, generators=gens)
            sync(device)
            seconds = (time.perf_counter() - t) / args.batch
            nfe = inferer.network_evaluations
            achieved = flops * nfe / seconds
            rows.append({"precision": precision, "method": method, "sampler": sampler, "steps": steps,
                         "network_evaluations": nfe, "seconds_per_slice": seconds,
                         "seconds_per_evaluation": seconds / nfe, "achieved_flops": achieved,
                         "fraction_of_matmul_peak": achieved / peaks[precision]})
            print(f"{precision} {method:<10} {sampler:<9} steps={steps!s:<4} nfe={nfe:<4} {seconds:8.2f} s/slice",
                  file=sys.stderr)

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    result = {"date": date.today().isoformat(), "machine": machine, "torch": torch.__version__,
              "preset": args.preset, "parameters": params, "size": args.size, "batch": args.batch,
              "unet_flops_per_forward": flops, "matmul_peak_flops": peaks, "rows": rows,
              "command": "python " + " ".join(sys.argv)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print(f"\n{machine}, torch {torch.__version__}, {date.today().isoformat()}; preset {args.preset} "
          f"({params / 1e6:.2f} M parameters), {flops / 1e9:.1f} GFLOP per {args.size}x{args.size} forward; "
          + ", ".join(f"{p} matmul peak {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()) + "\n")
    print("| precision | method | sampler | steps | network evals | s / slice | s / eval | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['method']} | {r['sampler']} | {r['steps'] or '-'} | {r['network_evaluations']} "
              f"| {r['seconds_per_slice']:.2f} | {r['seconds_per_evaluation']:.3f} | {r['achieved_flops'] / 1e9:.0f} "
              f"| {100 * r['fraction_of_matmul_peak']:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
