"""Named SSL augmentation recipes with the constants of their papers / official code:
`recipe(name, mean=..., std=...) -> ViewPair`, names from `recipes()`.

Each view is `compose(unstandardize(mean, std), crop, flip, colour jitter, grayscale, blur,
solarize, standardize(mean, std))`: the photometric steps run on [0, 1] pixels (pass the dataset's
`info["mean"]`, `info["std"]`; the defaults 0, 1 mean the data already are [0, 1] pixels).

* `simclr` — Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations", Appendix A, and google-research/simclr `data_util.py`: random resized crop
  (scale (0.08, 1), ratio (3/4, 4/3)), flip p = 0.5, colour jitter with strength s
  (brightness = contrast = saturation = 0.8 s, hue = 0.2 s; p = 0.8, random order), grayscale
  p = 0.2, Gaussian blur p = 0.5 with σ ∈ [0.1, 2.0] and a kernel of 10 % of the image side.
  s = 1.0 on ImageNet, 0.5 on CIFAR-10 (Appendix B.9), where blur is not used: pass
  `color_strength=0.5, blur=False`. Both views alike.
* `byol` — Grill et al. 2020, "Bootstrap Your Own Latent", Table 6 (Appendix B): crop (0.08, 1),
  (3/4, 4/3); flip 0.5; colour jitter p = 0.8 with brightness 0.4, contrast 0.4, saturation 0.2,
  hue 0.1 (random order); grayscale 0.2; blur p = 1.0 (view a) / 0.1 (view b), σ ∈ [0.1, 2.0]
  (23×23 kernel at 224 px, i.e. 10 %); solarisation p = 0.0 (a) / 0.2 (b).
* `barlow_twins` — Zbontar et al. 2021, "Barlow Twins", Appendix (Image augmentations) and
  facebookresearch/barlowtwins `main.py` (`Transform`): the BYOL recipe — `ColorJitter(0.4, 0.4,
  0.2, 0.1)` p = 0.8, grayscale 0.2, blur p = 1.0 / 0.1 with σ ∈ [0.1, 2.0], solarisation
  p = 0.0 / 0.2, flip 0.5, `RandomResizedCrop` with the default scale (0.08, 1).

Differences from the originals (sslntk works on small, fixed-size images and needs gradients):
the crop is resampled to the input size (bilinear, no antialias; the originals resize to 224 px
bicubic), boxes are clipped instead of rejection-sampled, and the probabilities are straight-through
gates (see `sslntk.data._image`).
"""

from __future__ import annotations

from sslntk import _validate as V
from sslntk.data._augment import ViewPair, compose
from sslntk.data._image import (
    GATES,
    color_jitter,
    gaussian_blur,
    horizontal_flip,
    random_grayscale,
    random_resized_crop,
    solarize,
    standardize,
    unstandardize,
)

_CONSTANTS = {
    # name: (jitter (b, c, s, h), blur p (a, b), solarize p (a, b))
    "simclr": (None, (0.5, 0.5), (0.0, 0.0)),
    "byol": ((0.4, 0.4, 0.2, 0.1), (1.0, 0.1), (0.0, 0.2)),
    "barlow_twins": ((0.4, 0.4, 0.2, 0.1), (1.0, 0.1), (0.0, 0.2)),
}


def recipes() -> list[str]:
    """Names accepted by `recipe`."""
    return sorted(_CONSTANTS)


def recipe(name: str, *, mean=0.0, std=1.0, color_strength: float = 1.0, blur: bool = True,
           kernel_size: int | None = None, gate: str = "straight_through") -> ViewPair:
    """The augmentation pair of recipe `name` (see the module docstring) for data `x = (pixels −
    mean) / std` (`mean`, `std`: scalars or per-channel, in [0, 1] pixel units). `color_strength`:
    SimCLR's s (simclr only). `blur=False` drops the Gaussian blur (SimCLR on CIFAR);
    `kernel_size`: the blur's taps (default 10 % of the image side). `gate`: how the probabilities
    are differentiated ("straight_through" or "expected", see `sslntk.data._image`)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a recipe name (str), got {type(name).__name__}")
    V.choice("name", name, recipes())
    V.choice("gate", gate, GATES)
    if not isinstance(blur, bool):
        raise TypeError(f"blur: expected a bool, got {blur!r}")
    V.nonnegative_scalar("color_strength", color_strength, upper=1.25)
    if name != "simclr" and color_strength != 1.0:
        raise ValueError(f"color_strength: only the simclr recipe has a colour strength, got "
                         f"{color_strength!r} for {name!r}")
    jit_c, blur_p, sol_p = _CONSTANTS[name]
    if jit_c is None:
        s = color_strength
        jit_c = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    pre, post = unstandardize(mean, std), standardize(mean, std)

    def view(i):
        augs = [pre, random_resized_crop((0.08, 1.0), (3 / 4, 4 / 3)),
                horizontal_flip(0.5, gate=gate),
                color_jitter(*jit_c, p=0.8, order="random", gate=gate),
                random_grayscale(0.2, gate=gate)]
        if blur:
            augs.append(gaussian_blur((0.1, 2.0), p=blur_p[i], kernel_size=kernel_size, gate=gate))
        if sol_p[i] > 0:
            augs.append(solarize(sol_p[i], 0.5, gate=gate))
        return compose(*augs, post)

    return ViewPair(view(0), view(1))
