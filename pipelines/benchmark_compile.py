"""`torch.compile` against eager for one inference forward of the `small` network (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python pipelines/benchmark_compile.py [--batch 8] [--height 120] [--width 320]
        [--channels 16 32 64 64] [--num-res-blocks 1] [--eager-only]

``--channels`` / ``--num-res-blocks`` override the `small` preset (the network ablations of
docs/ablations.md); ``--eager-only`` times the eager forward alone.

A batch of through-plane planes of the headline command (2 x 120 x 320: condition and noisy
image), freshly initialised weights (speed does not depend on them), ``torch.inference_mode()``:
seconds per eager forward, the first compiled call (compilation), seconds per compiled forward,
and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, nargs="+")
    parser.add_argument("--num-res-blocks", type=int)
    parser.add_argument("--eager-only", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from mrisr.networks import SR3UNet, network_config

    overrides = {k: v for k, v in (("channels", args.channels), ("num_res_blocks", args.num_res_blocks)) if v}
    net = SR3UNet(**network_config("small", **overrides)).eval()
    shape = f"batch {args.batch} x 2 x {args.height} x {args.width}"
    x = torch.randn(args.batch, 2, args.height, args.width, generator=torch.Generator().manual_seed(0))
    level = torch.full((args.batch,), 0.5)

    def per_forward(f):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            f(x, level)
            start = time.perf_counter()
            for _ in range(args.repeats):
                y = f(x, level)
        return (time.perf_counter() - start) / args.repeats, y

    eager, y_eager = per_forward(net)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    if args.eager_only:
        print(f"threads {torch.get_num_threads()}, {shape}, {params:.2f} M parameters: eager {eager:.2f} s per forward")
        return 0
    compiled = torch.compile(net, dynamic=False)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(x, level)
    compile_s = time.perf_counter() - start
    fast, y_fast = per_forward(compiled)
    print(f"threads {torch.get_num_threads()}, {shape}, {params:.2f} M parameters: "
          f"eager {eager:.2f} s, first compiled call {compile_s:.0f} s, compiled {fast:.2f} s per forward "
          f"({eager / fast:.2f}x), largest difference {float((y_eager - y_fast).abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
