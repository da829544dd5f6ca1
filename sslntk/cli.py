"""Command line: `sslntk run CONFIG.toml --out DIR [--set KEY=VALUE ...]`, `sslntk demo --out DIR`,
`sslntk list`.

Expected errors (a bad config key, a dataset limit, an output directory that cannot hold the run,
a missing dataset file) print one line `sslntk: error: ...` naming the config key and exit with
code 2; `--debug` prints the traceback instead. Figures are drawn with matplotlib's
non-interactive Agg backend, chosen here and nowhere else (`sslntk.plots` never sets a backend).
See `docs/how-to/run-experiments.md`.
"""

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


def cmd_run(cfg: dict, out: str, overrides=()) -> int:
    import matplotlib

    matplotlib.use("Agg")          # the command line draws into files only
    from sslntk import experiments

    res, did_work = experiments.run(cfg, out, progress=True, overrides=overrides)
    _print_summary(res, Path(out), did_work=did_work)
    return 0


def cmd_list() -> int:
    from sslntk import config

    # what needs no JAX first, at once: the library's names follow once JAX has started
    print("experiment kinds:", ", ".join(config.KINDS), flush=True)
    print("config sections: ", ", ".join(sorted({s for k in config.KIND_SECTIONS.values()
                                                  for s in k} | {"data", "arch", "loss"})),
          "| override a key: --set data.n=64", flush=True)
    from sslntk import data, dynamics, kernels, losses

    print("losses:          ", ", ".join(losses.names()))
    print("datasets:        ", ", ".join(data.datasets()),
          "| files: root or $SSLNTK_DATA (download = true fetches them)")
    print("recipes:         ", ", ".join(data.recipes()))
    print("augmentations:   ", ", ".join(data.augmentations()))
    print("architectures:   ", ", ".join(kernels.KINDS), "| activations:", ", ".join(kernels.ACTIVATIONS))
    print("solvers:         ", ", ".join(dynamics.METHODS))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslntk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an experiment from a TOML config")
    r.add_argument("config", help="path to CONFIG.toml")
    r.add_argument("--out", required=True, help="output directory (resumable)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (dotted name, TOML value), e.g. --set data.n=64 "
                        "--set dynamics.k=4; validated like the file and recorded with the run")
    d = sub.add_parser("demo", help="Barlow Twins staircase on digits with the default MLP NTK")
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a key of the demo config, e.g. --set data.n=32")
    sub.add_parser("list", help="list losses, datasets, recipes, augmentations, architectures "
                              "and solvers")
    sub.add_parser("show-demo-config", help="print the demo config as JSON")
    for sp in (r, d):
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from sslntk import config
    from sslntk.rundir import RunDirError

    try:
        if args.cmd == "list":
            return cmd_list()
        if args.cmd == "show-demo-config":
            print(json.dumps(config.validate(DEMO_CONFIG), indent=2))
            return 0
        if args.cmd == "run":
            cfg = config.load(args.config, args.overrides)
        else:
            cfg = config.validate(config.apply_overrides(DEMO_CONFIG, args.overrides))
        return cmd_run(cfg, args.out, args.overrides)
    except (config.ConfigError, RunDirError) as e:
        if getattr(args, "debug", False):
            raise
        msg = " ".join(str(e).split())
        print(f"sslntk: error: {msg}  (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
