"""Command line: `sslntk run CONFIG.toml --out DIR`, `sslntk demo --out DIR`, `sslntk list`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_CONFIG = {
    "kind": "staircase",
    "seed": 0,
    "data": {"name": "digits", "n": 128, "n_test": 64, "noise": 0.3, "translate": 1.0},
    "arch": {"kind": "mlp", "depth": 2, "activation": "relu"},
    "loss": {"name": "barlow_twins", "constants": {"lam": 1.0}},
    "dynamics": {"k": 8, "alpha": 1e-3, "method": "ode", "horizon": 1.5, "n_times": 300},
}


def _print_summary(res: dict, out: Path, *, did_work: bool):
    print(f"\nsslntk {res['config']['kind']} → {out}" + ("" if did_work else "  (up to date: no work done)"))
    for line in res.get("summary_lines", []):
        print("  " + line)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".pdf", ".json", ".npz"))
    print("  files: " + ", ".join(files))


def cmd_run(cfg: dict, out: str) -> int:
    from sslntk import experiments

    res, did_work = experiments.run(cfg, out, progress=True)
    _print_summary(res, Path(out), did_work=did_work)
    return 0


def cmd_list() -> int:
    from sslntk import config, data, dynamics, kernels, losses

    print("experiment kinds:", ", ".join(config.KINDS))
    print("losses:          ", ", ".join(losses.names()))
    print("datasets:        ", ", ".join(data.datasets()),
          "| files: root or $SSLNTK_DATA (download = true fetches them)")
    print("recipes:         ", ", ".join(data.recipes()))
    print("augmentations:   ", ", ".join(data.augmentations()))
    print("architectures:   ", ", ".join(kernels.KINDS), "| activations:", ", ".join(kernels.ACTIVATIONS))
    print("solvers:         ", ", ".join(dynamics.METHODS))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sslntk", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an experiment from a TOML config")
    r.add_argument("config", help="path to CONFIG.toml")
    r.add_argument("--out", required=True, help="output directory (resumable)")
    d = sub.add_parser("demo", help="Barlow Twins staircase on digits with the default MLP NTK")
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    sub.add_parser("list", help="list losses, datasets, recipes, augmentations, architectures "
                              "and solvers")
    sub.add_parser("show-demo-config", help="print the demo config as JSON")
    args = p.parse_args(argv)

    from sslntk import config
    from sslntk.rundir import RunDirError

    try:
        if args.cmd == "list":
            return cmd_list()
        if args.cmd == "show-demo-config":
            print(json.dumps(config.validate(DEMO_CONFIG), indent=2))
            return 0
        cfg = config.load(args.config) if args.cmd == "run" else config.validate(DEMO_CONFIG)
        return cmd_run(cfg, args.out)
    except (config.ConfigError, RunDirError) as e:
        print(f"sslntk: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
