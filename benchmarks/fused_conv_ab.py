"""A/B of a fused pack's convolutions on B7's workload: unfold + matrix product (``sweeplab.fused._UnfoldConv2d``,
the default) against the grouped convolution ``vmap`` makes of ``conv2d``, in alternating rounds in one process.
Prints one JSON line per round and a last one with each side's best packed seconds and B7 ratio.

    python benchmarks/fused_conv_ab.py [--rounds 2] [--size full|smoke]
"""
from __future__ import annotations

import argparse
import json

from b7_fused import run_b7

import sweeplab.fused as fused

SIDES = {"unfold": fused._unfolded, "grouped": lambda model: model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", choices=["full", "smoke"], default="full")
    args = parser.parse_args()
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for side in (list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]):
            fused._unfolded = SIDES[side]
            row = run_b7(args.size)
            print(json.dumps({"round": r, "side": side, "packed_seconds": row["packed_seconds"],
                              "one_by_one_seconds": row["one_by_one_seconds"], "packed_speedup": row["packed_speedup"],
                              "max_val_loss_rel_diff": row["max_val_loss_rel_diff"]}), flush=True)
            if side not in best or row["packed_seconds"] < best[side]["packed_seconds"]:
                best[side] = row
    print(json.dumps({side: {key: row[key] for key in ("packed_seconds", "one_by_one_seconds", "packed_speedup")}
                      for side, row in best.items()} | {"device": best["unfold"]["device"]}), flush=True)


if __name__ == "__main__":
    main()
