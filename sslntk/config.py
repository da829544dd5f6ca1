"""Experiment configs: a declarative schema, defaults, and up-front validation.

A config is a TOML table with `kind = "staircase" | "width_sweep" | "phase_diagram" | "hypergradient"`
and sections (`[data]`, `[arch]`, `[loss]`, `[dynamics]`, `[finite]`, `[phase]`, `[hypergradient]`).
Every key is checked before anything is computed or written: an error names the key
(`dynamics.alpha`), what was expected and what was given.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
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


def _fail(key, expected, got):
    raise ConfigError(f"config key {key!r}: expected {expected}, got {got!r}")


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
        if v not in choices:
            _fail(key, f"one of {list(choices)}", v)
    return check


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
    "seed": Key(0, integer(0), "base random seed (every random draw derives from it)"),
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
        "activation": Key("relu", one_of("relu", "erf", "gelu", "leaky_relu", "abs", "abs_relu")),
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
            "activation": Key("relu", one_of("relu", "erf", "gelu", "leaky_relu", "abs",
                                             "abs_relu")),
        },
        "finite": {
            "lr": Key(0.05, POS, "full-batch GD learning rate (the prediction uses the same)"),
            "steps": Key(2000, integer(1)),
            "n_times": Key(101, integer(2, 100000), "saved times"),
            "min_final": Key(0.5, NONNEG, "a mode's step counts as detected when its final "
                             "eigenvalue exceeds this"),
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
    if cfg["kind"] == "staircase":
        lc = cfg["loss"]
        if cfg["dynamics"]["method"] == "closed_form" and (
                lc["name"] != "barlow_twins" or lc["constants"].get("lam", 1.0) != 1.0):
            raise ConfigError("config key 'dynamics.method': 'closed_form' needs loss "
                              "barlow_twins with lam = 1, got "
                              f"{lc['name']} {lc['constants']}")


def load(path: str | Path) -> dict:
    """Read and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file: expected an existing TOML file, got {str(p)!r}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r}: not valid TOML ({e})") from None
    return validate(raw)


def config_hash(cfg: dict) -> str:
    """Stable hash of a validated config (identifies a run directory's contents)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
