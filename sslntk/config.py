"""Experiment configs: a declarative schema, defaults, and up-front validation.

A config is a TOML table with `kind = "staircase" | "width_sweep" | "phase_diagram" |
"hypergradient" | "finite_staircase"` and sections (`[data]`, `[arch]`, `[loss]`, `[dynamics]`,
`[finite]`, `[resnet]`, `[phase]`, `[hypergradient]`). Every key is checked before anything is
computed or written, in three stages:

1. `validate(raw)`: each key's type and range, and limits between keys (`dynamics.k <= 2 *
   data.n`, `finite.n_times <= finite.steps + 1`, ...).
2. `check_data(cfg)`: limits that depend on the dataset (`data.n + data.n_test` against the
   samples available, `data.classes`, `data.options`, missing dataset files), by loading it.
3. `apply_overrides(raw, ["data.n=64", ...])`: the command line's `--set` values, merged into the
   raw table before stage 1, so they are validated exactly like the file.

An error names the key with its dotted name (`dynamics.alpha`) and spells values as TOML does
(`true`, `"relu"`, `[3, 5]`), so the message can be pasted into the file. See
`docs/how-to/run-experiments.md`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A config key is missing, unknown, or has a bad value."""


@dataclass(frozen=True)
class Key:
    """One config key: its default and its check (`check(value) -> None` raising ConfigError)."""

    default: object
    check: Callable[[str, object], None]
    doc: str = ""


def toml_value(v) -> str:
    """`v` spelled as a TOML value: `true`, `"relu"`, `[1, 2]`, `{ lam = 1.0 }`."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if v is None:
        return "(nothing)"
    return repr(v)


def _fail(key, expected, got):
    raise ConfigError(f"config key {key!r}: expected {expected}, got {toml_value(got)}")


def integer(lo=None, hi=None):
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) \
                or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            _fail(key, f"an integer{rng}", v)
    return check


def number(lo=None, hi=None, *, strict_lo=False):
    def check(key, v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if strict_lo else v >= lo
        if ok and hi is not None:
            ok = v <= hi
        if not ok:
            rel = (f" > {lo}" if strict_lo else f" >= {lo}") if lo is not None else ""
            rel += f" and <= {hi}" if hi is not None else ""
            _fail(key, f"a finite number{rel}", v)
    return check


def one_of(*choices):
    def check(key, v):
        if isinstance(v, bool) or v not in choices:
            _fail(key, f"one of {toml_value(list(choices))}", v)
    return check


def activation(key, v):
    """One of `sslntk.kernels.ACTIVATIONS` (imported when a config is checked, not when this module
    is: `sslntk list` and config errors speak before JAX starts)."""
    from sslntk.kernels import ACTIVATIONS

    one_of(*ACTIVATIONS)(key, v)


def list_of(item_check, *, min_len=1, increasing=False):
    def check(key, v):
        if not isinstance(v, list) or len(v) < min_len:
            _fail(key, f"a list of at least {min_len} item(s)", v)
        for i, x in enumerate(v):
            item_check(f"{key}[{i}]", x)
        if increasing and any(b <= a for a, b in zip(v, v[1:], strict=False)):
            _fail(key, "a strictly increasing list", v)
    return check


def table_of_numbers(key, v):
    if not isinstance(v, dict):
        _fail(key, "a table of name = number", v)
    for k, x in v.items():
        number()(f"{key}.{k}", x)


POS = number(0, strict_lo=True)
NONNEG = number(0)

# sslntk.data.datasets() / recipes(), spelled out so that validating a config imports no JAX
# (tests/test_experiments.py checks they agree).
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "stl10")
DATASETS = ("digits", "gaussian_mixture", "spiked") + FILE_DATASETS
IMAGE_DATASETS = ("digits",) + FILE_DATASETS
RECIPES = ("none", "simclr", "byol", "barlow_twins")


def boolean(key, v):
    if not isinstance(v, bool):
        _fail(key, "true or false", v)


def string(key, v):
    if not isinstance(v, str):
        _fail(key, "a string", v)

# Sections shared by all kinds. Loss constants are validated by `sslntk.losses.get` itself (it names
# the constant and lists the valid ones) when the config is checked.
COMMON = {
    "seed": Key(0, integer(0, 2**63 - 1), "base random seed (every random draw derives from it)"),
    "precision": Key("float64", one_of("float64", "float32"),
                     "float64 (reference accuracy, enables jax_enable_x64) or float32 (speed)"),
    "data": {
        "name": Key("digits", one_of(*DATASETS), "dataset"),
        "root": Key("", string, "folder of the dataset files (file datasets); '' = $SSLNTK_DATA "
                    "or ~/.cache/sslntk"),
        "download": Key(False, boolean, "fetch the official files if missing (file datasets)"),
        "split": Key("train", one_of("train", "test", "unlabeled"),
                     "file split the n + n_test samples come from (file datasets)"),
        "classes": Key([], lambda k, v: None if v == [] else list_of(integer(0))(k, v),
                       "classes to keep ([] = all; digits and file datasets)"),
        "recipe": Key("none", one_of(*RECIPES), "SSL augmentation recipe (image datasets; "
                      "replaces translate, noise is added after it)"),
        "color_strength": Key(1.0, number(0, 1.25), "SimCLR colour strength s (recipe simclr)"),
        "blur": Key(True, boolean, "Gaussian blur in the recipe (SimCLR on CIFAR: false)"),
        "n": Key(128, integer(2), "source samples (two views each)"),
        "n_test": Key(64, integer(0), "held-out source samples"),
        "noise": Key(0.3, NONNEG, "additive Gaussian noise strength of the augmentation"),
        "translate": Key(1.0, NONNEG, "random translation strength in pixels (images only)"),
        "options": Key({}, lambda k, v: None if isinstance(v, dict) else _fail(k, "a table", v),
                       "extra keyword arguments of sslntk.data.load"),
    },
    "arch": {
        "kind": Key("mlp", one_of("mlp", "cnn")),
        "depth": Key(2, integer(1, 16)),
        "activation": Key("relu", activation),
        "W_std": Key(1.0, POS),
        "b_std": Key(0.0, NONNEG),
    },
    "loss": {
        "name": Key("barlow_twins", one_of("barlow_twins", "barlow_twins_standardized", "vicreg",
                                           "simclr", "spectral", "kernel_pca", "naive")),
        "constants": Key({}, table_of_numbers, "loss constants, e.g. {lam = 1.0}"),
    },
}

KIND_SECTIONS = {
    "staircase": {
        "dynamics": {
            "k": Key(8, integer(1, 256), "embedding dimension"),
            "alpha": Key(1e-3, POS, "initial scale: f0 ~ N(0, alpha^2 K_nngp)"),
            "method": Key("auto", one_of("auto", "ode", "closed_form", "eigen", "gd")),
            "horizon": Key(1.5, POS, "final time as a multiple of the predicted k-th step time"),
            "n_times": Key(200, integer(2, 100000), "saved times"),
        },
    },
    "width_sweep": {
        "dynamics": {
            "k": Key(4, integer(1, 256)),
            "alpha": Key(1e-2, POS),
            "method": Key("ode", one_of("ode", "closed_form", "eigen", "gd")),
            "n_times": Key(40, integer(2, 100000)),
        },
        "finite": {
            "widths": Key([64, 256, 1024], list_of(integer(1), increasing=True)),
            "seeds": Key(2, integer(1, 64)),
            "lr": Key(0.05, POS),
            "steps": Key(400, integer(1)),
        },
    },
    "phase_diagram": {
        "phase": {
            "model": Key("two_layer", one_of("one_layer", "two_layer")),
            "x_axis": Key("augmentation", one_of("augmentation", "imbalance")),
            "x_range": Key([0.0, 3.0], list_of(NONNEG, min_len=2, increasing=True)),
            "gamma_range": Key([0.0, 0.8], list_of(NONNEG, min_len=2, increasing=True)),
            "grid": Key(12, integer(2, 200)),
            "spectrum": Key([4.0, 2.0, 1.0, 0.5], list_of(POS), "data covariance eigenvalues a_i"),
            "tau": Key(1.0, POS),
        },
    },
    "hypergradient": {
        "dynamics": {
            "k": Key(4, integer(1, 256)),
            "alpha": Key(1e-3, POS),
        },
        "hypergradient": {
            "outcome": Key("step_time", one_of("step_time", "final_loss")),
            "mode": Key(1, integer(1), "which step (1-based) for outcome = step_time"),
            "wrt": Key("noise", one_of("noise", "alpha")),
            "fd_eps": Key(1e-3, POS, "relative step of the finite-difference check"),
        },
    },
    "finite_staircase": {
        "dynamics": {
            "k": Key(6, integer(1, 256), "embedding dimension"),
            "alpha": Key(1e-3, POS, "small-init scale: f = g_theta - (1 - alpha) g_theta0"),
        },
        "resnet": {
            "blocks": Key(2, integer(1, 16), "residual blocks"),
            "width": Key(64, integer(1), "channels"),
            "norm": Key("none", one_of("none", "layer", "batch")),
            "activation": Key("relu", activation),
        },
        "finite": {
            "lr": Key(0.05, POS, "full-batch GD learning rate (the prediction uses the same)"),
            "steps": Key(2000, integer(1)),
            "n_times": Key(101, integer(2, 100000), "saved times"),
            "min_final": Key(0.5, NONNEG, "a mode's step counts as detected when its final "
                             "eigenvalue exceeds this"),
        },
    },
    "downstream": {
        "dynamics": {
            "k": Key(4, integer(1, 256), "embedding dimension"),
            "alpha": Key(1e-4, POS, "initial scale: f0 ~ N(0, alpha^2 K_nngp); finite nets alpha"),
            "method": Key("ode", one_of("auto", "ode", "eigen", "gd")),
            "horizon": Key(1.3, POS, "final time as a multiple of the predicted k-th step time"),
            "n_times": Key(100, integer(2, 100000), "saved times"),
        },
        "probe": {
            "kinds": Key(["ridge", "knn"], list_of(one_of("ridge", "logistic", "knn")),
                         "probes (first one drawn for the finite networks)"),
            "standardize": Key("global", one_of("coordinate", "global", "none"),
                               "linear probes' feature standardisation"),
            "val_fraction": Key(0.2, number(0, 1, strict_lo=True), "validation split for lambda"),
            "knn_k": Key(20, integer(1), "kNN neighbours"),
            "temperature": Key(0.07, POS, "kNN temperature"),
        },
        "finite": {
            "widths": Key([256, 4096], lambda k, v: None if v == [] else
                          list_of(integer(1), increasing=True)(k, v), "[] = no finite networks"),
            "seeds": Key(1, integer(1, 64)),
            "lr": Key(0.05, POS, "full-batch GD learning rate (the kernel prediction uses it)"),
            "n_times": Key(41, integer(2, 100000)),
        },
        "strength": {
            "values": Key([0.1, 0.3, 0.6, 1.0], list_of(NONNEG, increasing=True),
                          "noise strengths for accuracy vs strength (t -> inf)"),
            "lam": Key(1.0, POS, "ridge lambda of the differentiated probe loss"),
            "fd_eps": Key(1e-4, POS, "relative step of the finite-difference check"),
        },
    },
    "stability": {   # sslntk.stability (asymmetric methods): six methods + ablations, phases
        "stability": {
            "k": Key(4, integer(1, 256), "embedding dimension"),
            "alpha": Key(0.1, POS, "initial scale: f0 ~ N(0, alpha^2 K_nngp)"),
            "t_end": Key(1000.0, POS, "final time (lr x steps)"), "lr": Key(0.02, POS, "gd step"),
            "n_times": Key(21, integer(2, 100000), "saved times"),
            "eta": Key(0.01, NONNEG, "weight decay of BYOL/SimSiam per unit time"),
            "ema_rate": Key(0.4, NONNEG), "alpha_p": Key(1.0, POS), "teacher_temp": Key(0.04, POS),
            "center_rate": Key(5.0, NONNEG), "n_prototypes": Key(10, integer(1)),
            "form": Key("euclidean", one_of("euclidean", "cosine")),
            "ablations": Key(True, boolean),
            "ema_rates": Key([0.01, 0.1, 1.0], list_of(POS, increasing=True)),
            "weight_decays": Key([0.0, 0.04, 0.1, 0.2], list_of(NONNEG, increasing=True)),
            "teacher_temps": Key([0.04, 0.1], list_of(POS, increasing=True)),
            "center_rates": Key([0.0, 5.0], list_of(NONNEG, increasing=True)),
        },
    },
}

KINDS = tuple(KIND_SECTIONS)


def _merge(schema: dict, given: dict, prefix: str, out: dict):
    unknown = set(given) - set(schema)
    if unknown:
        k = sorted(unknown)[0]
        where = f"{prefix}{k}"
        raise ConfigError(f"config key {where!r}: unknown key; valid keys here are "
                          f"{sorted(schema)}")
    for name, spec in schema.items():
        key = f"{prefix}{name}"
        if isinstance(spec, dict):
            sub = given.get(name, {})
            if not isinstance(sub, dict):
                _fail(key, "a table", sub)
            out[name] = {}
            _merge(spec, sub, key + ".", out[name])
        else:
            v = given.get(name, copy.deepcopy(spec.default))
            spec.check(key, v)
            out[name] = v


def validate(raw: dict) -> dict:
    """Return the full config (defaults filled in) or raise ConfigError naming the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a table, got {type(raw).__name__}")
    kind = raw.get("kind")
    if kind not in KIND_SECTIONS:
        raise ConfigError(f"config key 'kind': expected one of {list(KINDS)}, got {kind!r}")
    schema = {**COMMON, **KIND_SECTIONS[kind]}
    out: dict = {"kind": kind}
    _merge(schema, {k: v for k, v in raw.items() if k != "kind"}, "", out)
    _check_semantics(out)
    return out


def _check_semantics(cfg: dict):
    """Cross-key checks that need the library (loss constants, image-only options)."""
    from sslntk import losses

    try:
        losses.get(cfg["loss"]["name"], **cfg["loss"]["constants"])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config key 'loss.constants': {e}") from None
    d = cfg["data"]
    if cfg["arch"]["kind"] == "cnn" and d["name"] not in IMAGE_DATASETS:
        raise ConfigError("config key 'arch.kind': expected 'mlp' for non-image data "
                          f"{d['name']!r}, got 'cnn'")
    if d["name"] not in FILE_DATASETS:
        for k, default in (("root", ""), ("download", False), ("split", "train")):
            if d[k] != default:
                raise ConfigError(f"config key 'data.{k}': only file datasets "
                                  f"{list(FILE_DATASETS)} take it, got {d[k]!r} for "
                                  f"{d['name']!r}")
    elif d["split"] == "unlabeled" and d["name"] != "stl10":
        raise ConfigError(f"config key 'data.split': 'unlabeled' exists only for stl10, got it "
                          f"for {d['name']!r}")
    for opt in d["options"]:
        if opt in ("n", "dtype", "key", "classes", "root", "download", "split"):
            own = {"n": "data.n and data.n_test", "dtype": "precision", "key": "seed"}.get(
                opt, f"data.{opt}")
            raise ConfigError(f"config key 'data.options.{opt}': set by the config itself; use "
                              f"{own} instead")
    if d["classes"] and d["name"] not in IMAGE_DATASETS:
        raise ConfigError(f"config key 'data.classes': only digits and file datasets take it, got "
                          f"{d['classes']!r} for {d['name']!r}")
    if d["recipe"] != "none" and d["name"] not in IMAGE_DATASETS:
        raise ConfigError(f"config key 'data.recipe': expected 'none' for non-image data "
                          f"{d['name']!r}, got {d['recipe']!r}")
    if d["recipe"] not in ("none", "simclr") and d["color_strength"] != 1.0:
        raise ConfigError(f"config key 'data.color_strength': only the simclr recipe has one, got "
                          f"{d['color_strength']!r} with recipe {d['recipe']!r}")
    if cfg["kind"] == "finite_staircase" and d["name"] not in IMAGE_DATASETS:
        raise ConfigError(f"config key 'data.name': the ResNet of finite_staircase needs image "
                          f"data {list(IMAGE_DATASETS)}, got {d['name']!r}")
    kind = cfg["kind"]
    if kind in ("staircase", "hypergradient") and cfg["dynamics"]["k"] > 2 * d["n"]:
        raise ConfigError(f"config key 'dynamics.k': expected at most 2 * data.n = {2 * d['n']} "
                          f"(one mode per view at most), got {cfg['dynamics']['k']}")
    if kind in ("width_sweep", "finite_staircase"):
        sec = "dynamics" if kind == "width_sweep" else "finite"
        nt, steps = cfg[sec]["n_times"], cfg["finite"]["steps"]
        if nt > steps + 1:
            raise ConfigError(f"config key '{sec}.n_times': expected at most finite.steps + 1 = "
                              f"{steps + 1} (one saved time per GD step at most), got {nt}")
    if kind == "hypergradient":
        hg = cfg["hypergradient"]
        if hg["outcome"] == "step_time" and hg["mode"] > cfg["dynamics"]["k"]:
            raise ConfigError(f"config key 'hypergradient.mode': expected at most dynamics.k = "
                              f"{cfg['dynamics']['k']}, got {hg['mode']}")
    if kind == "phase_diagram":
        ph = cfg["phase"]
        if ph["x_axis"] == "imbalance" and not (0 < ph["x_range"][0] and ph["x_range"][1] < 1):
            raise ConfigError("config key 'phase.x_range': expected minority fractions inside "
                              f"(0, 1) with phase.x_axis = \"imbalance\", got "
                              f"{toml_value(ph['x_range'])}")
    if kind == "staircase":
        lc = cfg["loss"]
        if cfg["dynamics"]["method"] == "closed_form" and (
                lc["name"] != "barlow_twins" or lc["constants"].get("lam", 1.0) != 1.0):
            raise ConfigError("config key 'dynamics.method': 'closed_form' needs loss "
                              "barlow_twins with lam = 1, got "
                              f"{lc['name']} {lc['constants']}")


def _read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file: expected an existing TOML file, got {str(p)!r}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r}: not UTF-8 text (TOML files are UTF-8; byte "
                          f"{e.start} is 0x{e.object[e.start]:02x})") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r}: cannot be read ({e.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r}: not valid TOML ({e})") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """`"data.n=64"` → `(["data", "n"], 64)`: a dotted key and a TOML value (a bare word that is
    not valid TOML, e.g. `data.name=digits`, is taken as a string)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. "
                          "--set data.n=64 or --set loss.constants.lam=0.5")
    key, _, value = text.partition("=")
    parts = [k.strip() for k in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: expected a dotted key such as data.n, got {key!r}")
    value = value.strip()
    try:
        v = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        if not value or any(c in value for c in "[]{}\"'=,"):
            raise ConfigError(f"--set {text!r}: {value!r} is not a TOML value (strings may be "
                              "quoted: data.name=\"digits\")") from None
        v = value
    return parts, v


def apply_overrides(raw: dict, overrides) -> dict:
    """A copy of the raw config table with `--set KEY=VALUE` overrides merged in (dotted keys;
    missing tables are created). Validate the result with `validate`: an override is checked
    exactly as the same key in the file would be.

    Example:
        >>> apply_overrides({"kind": "staircase"}, ["data.n=64", "dynamics.k=4"])["data"]
        {'n': 64}
    """
    out = copy.deepcopy(raw)
    for text in overrides or ():
        parts, v = parse_override(text)
        node = out
        for i, k in enumerate(parts[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: config key {'.'.join(parts[:i + 1])!r} is a "
                                  f"value ({toml_value(nxt)}), not a table")
            node = nxt
        node[parts[-1]] = v
    return out


def load(path: str | Path, overrides=None) -> dict:
    """Read a TOML config file, merge `overrides` (`["data.n=64", ...]`, see `apply_overrides`)
    and validate it (`validate`; the dataset limits are `check_data`'s)."""
    return validate(apply_overrides(_read_toml(path), overrides))


# --------------------------------------------------------------------------------------------
# limits that depend on the dataset

# keyword arguments of sslntk.data.load that a config sets from its own keys (all else: options)
_FROM_KEYS = {"key": "seed", "classes": "data.classes", "root": "data.root",
              "download": "data.download", "split": "data.split", "dtype": "precision"}


def dataset_options(cfg: dict) -> dict:
    """Keyword arguments of `sslntk.data.load(cfg["data"]["name"], **options)` for a validated
    config (`n` = `data.n + data.n_test` samples; needs JAX)."""
    import jax
    import jax.numpy as jnp

    d = cfg["data"]
    opts = dict(d["options"])
    opts.setdefault("key", jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 1))
    if d["classes"]:
        opts.setdefault("classes", d["classes"])
    if d["name"] in FILE_DATASETS:
        opts.setdefault("root", d["root"] or None)
        opts.setdefault("download", d["download"])
        opts.setdefault("split", d["split"])
    opts["n"] = d["n"] + d["n_test"]
    opts["dtype"] = jnp.float64 if cfg["precision"] == "float64" else jnp.float32
    return opts


def load_dataset(cfg: dict):
    """The `sslntk.data.Dataset` a validated config describes (`data.n + data.n_test` samples);
    any error of the loader is a ConfigError naming the config key (`check_data`)."""
    from sslntk import data

    d = cfg["data"]
    opts = dataset_options(cfg)
    given = set(d["options"])
    try:
        return data.load(d["name"], **opts)
    except TypeError as e:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad:
            raise ConfigError(f"config key 'data.options.{bad.group(1)}': unknown option of the "
                              f"{d['name']!r} loader; it takes "
                              f"{toml_value(_loader_options(d['name']))}") from None
        raise ConfigError(_data_message(str(e), d, given)) from None
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(_data_message(str(e), d, given)) from None


def _loader_options(name: str) -> list[str]:
    import inspect

    from sslntk import data

    fn = data.load_files if name in FILE_DATASETS else getattr(data, name)
    return sorted(p for p in inspect.signature(fn).parameters if p not in ("n", "name"))


def _data_message(msg: str, d: dict, given: set) -> str:
    """A loader's message `arg: ...` as one line naming the config key, in TOML spelling."""
    msg = " ".join(msg.split())
    for py, tm in (("pass download=True", "set download = true in [data]"),
                   ("download=True", "download = true"), ("True", "true"), ("False", "false"),
                   ("None", "nothing"), ("the root argument", "data.root")):
        msg = msg.replace(py, tm)
    arg, sep, rest = msg.partition(": ")
    if sep and arg == d["name"]:
        return f"config key 'data.name' = {toml_value(arg)}: {rest}"
    if sep and re.fullmatch(r"\w+", arg):
        if arg == "n":
            m = re.search(r"got (\d+)", rest)
            rest = re.sub(r",? got \d+$", "", rest)
            return (f"config keys 'data.n' + 'data.n_test': {rest}, got {d['n']} + {d['n_test']}"
                    + (f" = {m.group(1)}" if m else ""))
        if arg in given:
            return f"config key 'data.options.{arg}': {rest}"
        key = _FROM_KEYS.get(arg, f"data.options.{arg}")
        return f"config key {key!r}: {rest}"
    return f"config key 'data.name' = {toml_value(d['name'])}: {msg}"


def check_data(cfg: dict) -> None:
    """Check a validated config against its dataset before any work: `data.n + data.n_test`
    against the samples available (of `data.classes`), the classes, `data.options`, the dataset
    files (a missing file says how to set `download = true`). Raises ConfigError naming the key."""
    load_dataset(cfg)


def config_hash(cfg: dict) -> str:
    """Stable hash of a validated config (identifies a run directory's contents)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
