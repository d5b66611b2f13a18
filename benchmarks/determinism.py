"""Are two CPU fits of the same seed bit-identical? Fits VarAD in fresh subprocesses and compares state dicts.

    python benchmarks/determinism.py [--runs 2] [--threads N] [--image-size 128] [--epochs 1] [--images 8]

Each run is ``adlib.study.run_one`` (the notebooks' run path) with VarAD's smoke recipe on the embedded
``synthetic_ad`` wood, the run cache off (every run trains). Prints, per run, the thread count, the scan backend
that ran and a digest of the trained state; then the largest absolute difference between the runs' parameters
(0.0 = bit for bit).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import hashlib, json, sys, torch
from adlib import ssm
from adlib.app.run import recipe_setting
from adlib.data import synthetic_root
from adlib.study import DataSource, run_one
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
source = DataSource("synthetic_ad", synthetic_root() / "synthetic_ad", "wood", synthetic=True)
setting = recipe_setting("varad", "smoke", image_size=args["size"], max_test=2)
run = run_one(setting, source, "varad", seed=0, cache=False, pretrained=args["pretrained"], epochs=args["epochs"],
              batch_size=4, max_train_images=args["images"], disk_cache=False)
state = {k: v.detach().clone() for k, v in run.model.state_dict().items() if v.is_floating_point()}
torch.save(state, args["out"])
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()[:16]
print(json.dumps({"threads": torch.get_num_threads(), "scan": ssm.backends_used(), "digest": digest}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args()
    import tempfile

    import torch

    states = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            out = os.path.join(tmp, f"{run}.pt")
            spec = {"threads": args.threads, "size": args.image_size, "epochs": args.epochs, "images": args.images,
                    "pretrained": not args.random_weights, "out": out}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                                  check=True)
            print(f"run {run}: {done.stdout.strip().splitlines()[-1]}")
            states.append(torch.load(out))
    first = states[0]
    for run, state in enumerate(states[1:], 1):
        worst = max(float((state[k] - first[k]).abs().max()) for k in first)
        names = [k for k in first if not torch.equal(state[k], first[k])]
        print(f"run {run} vs run 0: max |difference| {worst:.3g}; tensors that differ: {len(names)} of {len(first)}"
              + (f" (first: {names[0]})" if names else ""))


if __name__ == "__main__":
    main()
