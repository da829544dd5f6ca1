"""The public API, pinned: `sslntk.__all__` and each public package's `__all__` (or, for a module
without one, its public names defined in sslntk) against the list captured before the [L] layout
refactor (kernels/ and data/ became packages). A change here is an API change: make it on purpose,
together with the README and a note in the issue."""

import importlib
import inspect

import pytest

import sslntk

API = {
    "sslntk": [
        "Arch", "Dataset", "Loss", "Trajectory", "Views", "averaged_kernel", "cli", "cnn",
        "config", "contrastive_kernel", "contrastive_spectrum", "data", "datasets",
        "dynamics", "empirical_ntk", "experiments", "finite", "kernel_spectrum", "kernels",
        "linalg", "linearize", "load", "losses", "make_views", "metrics", "mlp", "network",
        "nngp", "ntk", "ntk_and_nngp", "pair_matrix", "phase", "phase_diagram", "plots",
        "solve", "solve_many", "theory", "train", "width_sweep",
    ],
    "kernels": [
        "ACTIVATIONS", "Arch", "ContrastiveSpectrum", "KINDS", "KernelSpectrum", "METHODS",
        "PADDINGS", "READOUTS", "activation_layer", "averaged_kernel", "cnn", "contrastive_kernel",
        "contrastive_spectrum", "kernel_spectrum", "mlp", "nngp", "ntk", "ntk_and_nngp",
        "pair_matrix", "reference_empirical_ntk", "reference_gradient_descent",
        "stax_network",
    ],
    "data": [
        "Augmentation", "Compose", "Dataset", "GaussianNoise", "Jitter", "Mask",
        "Translate", "Views", "augmentation", "augmentations", "compose", "datasets",
        "digits", "gaussian_mixture", "gaussian_noise", "jitter", "load", "make_views",
        "mask", "shift", "spiked", "translate",
    ],
    "dynamics": [
        "FAILED", "LARGE_N", "MAX_STEPS", "METHODS", "NONFINITE", "SMALL_N", "STATUS_NAMES",
        "SUCCESS", "Trajectory", "available_methods", "choose_method", "solve", "solve_many",
    ],
    "losses": [
        "Loss", "NEGATIVES", "SIMILARITIES", "as_loss", "barlow_twins",
        "barlow_twins_standardized", "cross_correlation", "get", "kernel_pca", "naive",
        "names", "simclr", "spectral", "split_views", "vicreg",
    ],
    "finite": [
        "ExponentFit", "Frozen", "Linearized", "MAX_LR_RATE", "Network", "OPTIMIZERS",
        "SUPPORTED_ACTIVATIONS", "TrainResult", "WidthSweep", "activation_fn",
        "empirical_ntk", "fit_exponent", "flow_rate", "forward", "from_nt_params",
        "linearize", "n_params", "network", "relative_deviation", "save_steps",
        "stack_models", "to_nt_params", "train", "train_batched", "unstack_model",
        "width_sweep",
    ],
    "theory": [
        "ConstrainedFlow", "EffectiveInit", "FixedPoint", "GDResult", "LiftedCoefficients",
        "M1Solution", "M2Solution", "NaiveCollapse", "ORIGIN_TYPES", "PAIR_KINDS",
        "RETRACTIONS", "StepwiseResult", "StiefelPath", "WidthFree", "collapse",
        "collapse_rates", "constrained_flow", "constrained_tangent_kernel",
        "contrastive_modes", "default_times", "effective_init", "effective_time",
        "escape_time_shift", "final_embedding", "function_operator", "imbalance_gamma_c",
        "imbalance_threshold", "imbalance_variance", "infonce_quartic", "landscape",
        "lifted_coefficients", "logistic_c", "loss_curve", "m1_loss", "m1_rank",
        "m1_solution", "m2_direction_loss", "m2_loss", "m2_magnitude", "m2_solution",
        "m2_thresholds", "naive_flow", "naive_function_flow", "naive_limit",
        "origin_hessian", "origin_type", "pair_distance_matrix", "pair_distance_rank",
        "pair_matrix", "pair_operator", "representation_rank", "simulate", "simulate_m1",
        "simulate_m2", "spectral_loss", "step_time", "step_width", "stepwise",
        "stiefel_fixed_point", "stiefel_gd", "time_to_angle", "two_layer_blowup_time",
        "view_covariance", "wang_isola_loss", "wang_isola_matrix", "width_free_flow",
        "width_free_limit",
    ],
    "methods": [],
    "probes": [],
    "downstream": [],
    "metrics": [
        "Stability", "alignment", "alpha_req", "center_vector",
        "cross_correlation_spectrum", "effective_rank", "embedding_spectrum", "group_views",
        "lidar", "principal_angles", "rankme", "sample_means", "stability", "step_times",
        "uniformity",
    ],
    "lowrank": [],
}


ADDED = {  # names added since, each by an issue that documents it ([H], [I], [J], [M])
    "sslntk": [
        "CollapseWarning", "DIVERGED", "NONFINITE", "STATIONARY", "STATUS_NAMES", "SUCCESS",
        "diagnostics", "explain", "methods",
        "downstream", "probes", "lowrank",
    ],
    "kernels": [
        "BACKENDS", "memory_plan",
        # one object per activation, and the initial-function sampler
        "Abs", "AbsRelu", "Activation", "Erf", "Gelu", "LeakyRelu", "Relu", "as_activation",
        "initial_function",
    ],
    "data": [
        "Affine", "ColorJitter", "DownloadError", "FormatError", "GaussianBlur", "HorizontalFlip",
        "RandomGrayscale", "RandomResizedCrop", "Solarize", "ViewPair", "adjust_brightness",
        "adjust_contrast", "adjust_hue", "adjust_saturation", "cifar10", "cifar100", "color_jitter",
        "data_root", "fashion_mnist", "fetch", "gaussian_blur", "grayscale", "horizontal_flip",
        "load_files", "mnist", "random_grayscale", "random_resized_crop", "read_cifar_batch",
        "read_idx", "read_stl10_images", "read_stl10_labels", "recipe", "recipes", "resized_crop",
        "solarize", "standardize", "stl10", "unstandardize", "write_idx",
    ],
    "dynamics": [
        "ClosedForm", "Constrained", "DIVERGED", "Eigen", "GD", "INTEGRATORS", "Ode", "SOLVERS",
        "STATIONARY", "Solver", "available_solvers", "choose_solver", "make_solver",
    ],
    "losses": [
        "BarlowTwins", "BarlowTwinsStandardized", "CONVENTIONS", "KernelPCA", "Naive", "SimCLR",
        "Spectral", "VICReg",
    ],
    "methods": [
        "GradientFlow", "KernelOp", "Method", "MomentForm", "State", "StepwiseForm", "as_method",
        "as_state", "method_label", "require",
        # asymmetric methods (BYOL, SimSiam, DirectPred, DINO, SwAV)
        "byol_loss", "byol_momentum", "cosine_schedule", "dino_center", "dino_loss",
        "dino_teacher_temperature", "simsiam_loss", "sinkhorn", "swap_views", "swav_loss",
        "BYOL", "DINO", "DirectPred", "EMARate", "KernelPredictor", "Predictive", "SimSiam",
        "SwAV", "dino_linear_operator", "rkhs_gram",
    ],
    "finite": [
        "AugmentedPrediction", "AugmentedResult", "CoordCheck", "GradientStep", "KernelMotion",
        "KernelPrediction", "LOOPS", "NORMS", "PARAMS", "ResNet", "SCHEDULES", "StepRule",
        "augmented_kernel_prediction",
        "coord_check", "kernel_alignment", "kernel_drift", "kernel_prediction", "learning_rate",
        "make_optimizer", "output_space_ntk", "pooled_views", "resnet", "train_augmented",
        # asymmetric methods at finite width
        "MethodRule", "OutputSpaceKernelOp", "method_prediction", "train_method",
        "train_method_augmented", "MLPPredictor", "DINOHead", "PredictorHeadRule", "DINOHeadRule",
    ],
    "theory": [
        "staircase",   # the stepwise module; `theory.stepwise` is now the function
        # asymmetric methods: linear-network theory (Tian et al. 2021)
        "COLLAPSE_TOL", "LinearSSL", "LinearState", "LinearTrajectory", "ModeSystem",
        "ModeTrajectory", "PREDICTORS", "alignment_operator", "balance_residual",
        "certain_collapse_decay", "classify_modes", "directpred_predictor", "fixed_points",
        "isotropic_views", "kernel_consistent_predictor", "mode_rates", "noncontrastive",
        "simulate_linear", "simulate_mode", "view_moments",
    ],
    "metrics": [
        "BELOW_THRESHOLD", "LEARNED", "NO_RISE", "STEP_REASONS", "STEP_THRESHOLD", "Steps",
        "UNDEFINED", "cross_correlation", "detect_steps",
    ],
    "probes": [   # downstream probes (new module)
        "KNN", "Logistic", "PROBES", "Probe", "ProbeResult", "Ridge", "STANDARDIZE", "accuracy",
        "get", "knn_scores", "logistic_fit", "ridge_fit", "standardize",
    ],
    "downstream": [   # downstream accuracy predictions (new module)
        "DownstreamCurve", "FiniteComparison", "LimitCurve", "WidthAccuracy", "finite_curve",
        "kernel_curve", "limit_curve", "plateaus", "probe_embeddings", "run_downstream", "staircase",
        "strength_gradient", "strength_objective", "width_sweep",
    ],
    "lowrank": [   # the low-rank route (new module)
        "LANDMARKS", "LowRankBound", "LowRankDecomposition", "LowRankKernel", "apply_kernel",
        "dense_kernel_bytes", "kernel", "kernel_diagonal", "memory_plan", "nystrom_decomposition",
        "solve",
    ],
}


def _public(mod) -> list[str]:
    if hasattr(mod, "__all__"):
        return sorted(mod.__all__)
    return sorted(n for n in dir(mod) if not n.startswith("_")
                  and not inspect.ismodule(getattr(mod, n))
                  and str(getattr(getattr(mod, n), "__module__", "sslntk")).startswith("sslntk"))


def test_top_level_api():
    assert sorted(sslntk.__all__) == sorted(API["sslntk"] + ADDED["sslntk"])
    for name in sslntk.__all__:
        assert getattr(sslntk, name) is not None


@pytest.mark.parametrize("name", [k for k in API if k != "sslntk"])
def test_package_api(name):
    mod = importlib.import_module(f"sslntk.{name}")
    assert _public(mod) == sorted(API[name] + ADDED[name])   # nothing removed or renamed
    missing = [n for n in API[name] if not hasattr(mod, n)]
    assert not missing, missing
