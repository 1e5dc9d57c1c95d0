r"""Datasets, models, guides and bounds of a ``pyro-mmvae`` run, built from its configuration.

A run is described by a flat configuration (the parsed command line, saved as ``config.json``
in the run directory). Everything a run needs is rebuilt from it by the functions here, which
is how ``pyro-mmvae evaluate RUN_DIR``, ``generate RUN_DIR`` and ``train --resume RUN_DIR``
restore a trained model: :func:`load_run` reads the configuration, loads the data, rebuilds
model and guide and loads the checkpoint.

- :data:`DATASETS` maps a ``--dataset`` name to a :class:`DatasetSpec`: how to load it into a
  :class:`PreparedData` (train/test modalities, masks, labels, the kind of each modality), the
  per-dataset defaults of the command line, and how to build its generative model.
- :func:`build_guide` makes one encoder per modality from its kind (``"vector"``: MLP,
  ``"image"``: :class:`~pyro_mmvae.guides.ConvImageEncoder`, ``"text"``:
  :class:`~pyro_mmvae.guides.TextEncoder`) and the aggregator named by ``--aggregator``;
  :func:`build_model` the matching decoders and the prior named by ``--prior``; :func:`build_loss`
  the bound named by ``--bound`` (with ``--beta-warmup STEPS``, ``beta`` is the schedule
  ``linear_warmup(STEPS, start=0, end=--beta)``); ``--expert-scale`` is the ``scale=`` of the
  aggregator's Gaussian heads.
- The bound-specific options ``--objective`` (``multisource``), ``--alpha`` and
  ``--beta-norm`` (``recursive``, ``jmvae``) and the bound-dependent default of
  ``--num-particles`` are validated and resolved by :func:`bound_options`
  (:data:`BOUND_DEFAULTS`): a ``ValueError`` naming the option for a combination that means
  nothing, before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

import pyro
import torch
from torch import nn

from pyro_mmvae.guides import (ConvImageEncoder, JointEncoder, MLPEncoder, MoE, MoPoE,
                               MultimodalGuide, PoE, SelfAttention, SelfAttentionMixture,
                               SubsetEncoders, SumPooling, SumPoolingMixture, TextEncoder)
from pyro_mmvae.models import (GaussianMixturePrior, LinearGaussianModel, MultimodalModel,
                               StandardNormalPrior, dimension_likelihood_weights)
from pyro_mmvae.models.decoders import (BernoulliDecoder, CategoricalDecoder, GaussianDecoder,
                                        LaplaceDecoder)
from pyro_mmvae.models.networks import ConvImageDecoder, TextDecoder
from pyro_mmvae.data import load_digits_svhn_text, load_poly_digits, shared_latent_study
from pyro_mmvae.infer import (JointMultimodalELBO, MaskedMultimodalELBO, MixtureMultimodalELBO,
                              MultiSourceELBO, RecursiveMultimodalELBO, SubsampledMultimodalELBO,
                              linear_warmup)
from pyro_mmvae.infer.multisource import OBJECTIVES
from pyro_mmvae.infer.recursive_elbo import DEFAULT_ALPHA
from pyro_mmvae.train import CHECKPOINT, CONFIG, load_checkpoint, restore_checkpoint

# --- data ---------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """A dataset split into train and test, ``{modality: (N, ...)}`` each.

    ``kinds`` says how each modality is encoded and decoded (``"vector"``, ``"image"`` or
    ``"text"``); masks are None when everything is observed; labels are None for unlabelled
    data (then coherence and latent classification are skipped).
    """

    train: Dict[str, torch.Tensor]
    test: Dict[str, torch.Tensor]
    kinds: Dict[str, str]
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    num_classes: Optional[int] = None
    info: Dict[str, object] = field(default_factory=dict)  # recorded in config.json

    @property
    def modality_dims(self) -> Dict[str, int]:
        return {m: int(x[0].numel()) for m, x in self.train.items()}

    @property
    def modality_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {m: tuple(x.shape[1:]) for m, x in self.train.items()}

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the data (model and guide are cast to it)."""
        return next(x.dtype for x in self.train.values() if x.is_floating_point())

    @property
    def num_train(self) -> int:
        return int(next(iter(self.train.values())).shape[0])

    @property
    def num_test(self) -> int:
        return int(next(iter(self.test.values())).shape[0])


@dataclass
class DatasetSpec:
    """How the CLI loads a dataset, its default options and how to build its model."""

    load: Callable[[argparse.Namespace], PreparedData]
    defaults: Dict[str, object]
    help: str = ""
    build_model: Optional[Callable[[argparse.Namespace, PreparedData], nn.Module]] = None
    #: the options of :data:`DATASET_OPTIONS` that apply to this dataset (the others are an
    #: error on the command line and are not recorded in ``config.json``)
    options: Tuple[str, ...] = ()


def split(data: Mapping[str, torch.Tensor], test_fraction: float):
    """First ``1 - test_fraction`` of the points for training, the rest for testing."""
    n = next(iter(data.values())).shape[0]
    n_train = n - int(round(n * test_fraction))
    return ({m: x[:n_train] for m, x in data.items()},
            {m: x[n_train:] for m, x in data.items()})


def load_linear_gaussian(args) -> PreparedData:
    """``shared_latent_study`` (the Table 2 data of Hirt et al.), split into train and test."""
    sim = shared_latent_study(num_points=args.num_points, num_modalities=args.num_modalities,
                              latent_dim=args.latent_dim, seed=args.data_seed)
    train, test = split(sim.data, args.test_fraction)
    return PreparedData(train, test, {m: "vector" for m in train},
                        info={"generator": "shared_latent_study", "data_seed": args.data_seed})


def _from_datasets(train, test, info, num_train=None) -> PreparedData:
    """A built-in dataset's splits; ``num_train`` keeps only the first training points."""
    kinds = {m: "text" if m == "text" else "image" for m in train.data}
    keep = slice(None) if num_train is None else slice(0, num_train)
    return PreparedData({m: x[keep] for m, x in train.data.items()}, dict(test.data), kinds,
                        train.labels[keep], test.labels, num_classes=10, info=info)


def load_polydigits(args) -> PreparedData:
    """PolyDigits (:func:`~pyro_mmvae.data.load_poly_digits`): 5 image modalities."""
    train, test = load_poly_digits(args.data_root, image_size=args.image_size,
                                   seed=args.data_seed)
    return _from_datasets(train, test, {"dataset": "PolyDigits", "image_size": args.image_size,
                                        "data_seed": args.data_seed, "cache": train.path.name},
                          getattr(args, "train_points", None))


def load_digits_svhn_text_data(args) -> PreparedData:
    """DigitsSVHNText (:func:`~pyro_mmvae.data.load_digits_svhn_text`): grey digit, SVHN-like
    digit, text."""
    train, test = load_digits_svhn_text(args.data_root, image_size=args.image_size,
                                        seed=args.data_seed)
    return _from_datasets(train, test, {"dataset": "DigitsSVHNText",
                                        "image_size": args.image_size,
                                        "data_seed": args.data_seed, "cache": train.path.name},
                          getattr(args, "train_points", None))


def build_linear_gaussian_model(args, data: PreparedData):
    """``LinearGaussianModel`` with one linear decoder per modality and unit noise."""
    return LinearGaussianModel(data.modality_dims, args.latent_dim)


# options that apply to some datasets only (DatasetSpec.options says which): the image datasets'
# cache, size and training subset, the convolution channels, the image likelihood and the
# classifiers of the labelled evaluation; the simulation's size and split and the MLP encoders
# of vector modalities
IMAGE_OPTIONS = ("data_root", "image_size", "train_points", "channels", "likelihood",
                 "classifier_epochs", "eval_points")
SIMULATION_OPTIONS = ("num_modalities", "num_points", "test_fraction", "hidden")
DATASET_OPTIONS = IMAGE_OPTIONS + SIMULATION_OPTIONS

IMAGE_DEFAULTS = dict(latent_dim=16, epochs=30, batch_size=128, lr=1e-3, aggregator="sumpooling",
                      aggregator_width=64, hidden=[64], channels=[32, 64], is_samples=16,
                      eval_points=500)

DATASETS: Dict[str, DatasetSpec] = {
    "polydigits": DatasetSpec(
        load_polydigits, IMAGE_DEFAULTS,
        help="PolyDigits: the PolyMNIST recipe on scikit-learn's bundled digits, 5 image "
             "modalities (3x16x16), 10000 train / 2000 test tuples (default)",
        options=IMAGE_OPTIONS),
    "digits-svhn-text": DatasetSpec(
        load_digits_svhn_text_data, IMAGE_DEFAULTS,
        help="DigitsSVHNText: the MNIST-SVHN-Text recipe on the bundled digits (grey digit "
             "1x16x16, SVHN-like colour digit 3x16x16, the class word as 8x71 one-hot text)",
        options=IMAGE_OPTIONS),
    "linear-gaussian": DatasetSpec(
        load_linear_gaussian,
        dict(latent_dim=5, epochs=50, batch_size=128, lr=1e-2, aggregator="poe",
             aggregator_width=128, hidden=[128, 128], channels=[32, 64], is_samples=100,
             eval_points=None),
        help="linear-Gaussian shared-latent simulation (Hirt et al. §5.1): Gaussian modalities "
             "x_m = W_m z + b_m + noise, D_m in 30..59; exact log-likelihoods",
        build_model=build_linear_gaussian_model, options=SIMULATION_OPTIONS),
}
DEFAULT_DATASET = "polydigits"

# --- guide, model, bound ------------------------------------------------------------------------

FIXED_AGGREGATORS = ("poe", "poe-divide", "moe", "mopoe")
AGGREGATORS = ("poe", "poe-divide", "moe", "mopoe", "sumpooling", "selfattention",
               "sumpooling-mixture", "selfattention-mixture", "subset-encoders", "joint")
# aggregators whose q(z | x_S) is one diagonal Gaussian, Normal(...).to_event(1), for every
# subset S (the others give mixtures)
GAUSSIAN_AGGREGATORS = ("poe", "poe-divide", "sumpooling", "selfattention", "subset-encoders",
                        "joint")
MAX_SUBSET_MODALITIES = 10  # SubsetEncoders builds 2^M - 1 networks
BOUNDS = {"masked": MaskedMultimodalELBO, "mixture": MixtureMultimodalELBO,
          "subsampled": SubsampledMultimodalELBO, "multisource": MultiSourceELBO,
          "recursive": RecursiveMultimodalELBO, "jmvae": JointMultimodalELBO}
# the defaults of the options left at None (num_particles: every bound; the others: the bounds
# that take them): MSNVI's K = 16 importance samples and objective L_ind; the M2VAE's
# alpha = 1e-2 (its study: alpha <= 1e-2 works, alpha = 1 over-constrains), also for JMVAE-kl
DEFAULT_NUM_PARTICLES = 1
BOUND_DEFAULTS: Dict[str, Dict[str, object]] = {
    "multisource": {"num_particles": 16, "objective": "ind"},
    "mixture": {"mixture_form": "stratified"},
    "recursive": {"alpha": DEFAULT_ALPHA},
    "jmvae": {"alpha": DEFAULT_ALPHA},
}
# option -> the bounds that take it
BOUND_OPTIONS = {"objective": ("multisource",), "alpha": ("recursive", "jmvae"),
                 "beta_norm": ("recursive", "jmvae"), "mixture_form": ("mixture",)}
FIXED_SUBSET_BOUNDS = ("multisource", "recursive", "jmvae")  # no masking distribution
PRIORS = ("normal", "gmm")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def bound_options(args) -> Dict[str, object]:
    """The bound-specific options of ``args``, validated and with the bound's defaults for
    those left at None: ``{"num_particles", "objective", "alpha", "beta_norm",
    "mixture_form"}`` (the last four None where the bound takes no such option).

    ``ValueError`` naming the option when it does not apply to ``--bound``: ``--objective``
    without ``multisource``; ``--alpha`` / ``--beta-norm`` without ``recursive`` or ``jmvae``;
    ``--mixture-form`` without ``mixture``;
    ``--masking`` with the bounds that score fixed subsets (``multisource``, ``recursive``,
    ``jmvae``); ``--iwae`` with ``multisource`` (always importance-weighted); an
    ``--aggregator`` that gives mixtures with ``recursive`` / ``jmvae`` (their KL pulls
    between subsets are closed-form Gaussian KLs); ``--beta-norm`` with ``--beta``,
    ``--beta-warmup`` or ``--iwae``. Configurations saved before these options resolve to the
    old behaviour (``num_particles`` as saved, no bound-specific option).
    """
    bound = args.bound
    if bound not in BOUNDS:
        raise ValueError(f"--bound must be one of {sorted(BOUNDS)}, got {bound!r}")
    defaults = BOUND_DEFAULTS.get(bound, {})
    out: Dict[str, object] = {}
    for key, takers in BOUND_OPTIONS.items():
        value = getattr(args, key, None)
        if value is not None and bound not in takers:
            raise ValueError(f"{_flag(key)} is an option of --bound "
                             f"{' / '.join(takers)} only, not of --bound {bound}")
        out[key] = defaults.get(key) if value is None else value
    particles = getattr(args, "num_particles", None)
    if particles is None:
        particles = defaults.get("num_particles", DEFAULT_NUM_PARTICLES)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"--num-particles must be a positive integer, got {particles!r}")
    out["num_particles"] = particles
    if out["objective"] is not None and out["objective"] not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {OBJECTIVES}, got {out['objective']!r}")
    if out["alpha"] is not None and not (isinstance(out["alpha"], (int, float))
                                         and 0 <= out["alpha"] < float("inf")):
        raise ValueError(f"--alpha must be a finite number >= 0, got {out['alpha']!r}")
    if bound in FIXED_SUBSET_BOUNDS and getattr(args, "masking", None) is not None:
        raise ValueError(f"--masking does not apply to --bound {bound}, which scores a fixed "
                         "set of subsets (no masking distribution); drop --masking")
    if bound == "multisource" and getattr(args, "iwae", False):
        raise ValueError("--iwae does not apply to --bound multisource: its objectives are "
                         "always importance-weighted, with K = --num-particles samples")
    aggregator = getattr(args, "aggregator", None)
    if bound in ("recursive", "jmvae") and aggregator is not None \
            and aggregator not in GAUSSIAN_AGGREGATORS:
        raise ValueError(f"--bound {bound} needs a diagonal-Gaussian q(z | x_S) for every "
                         f"subset S (its KL terms between subsets are closed-form), but "
                         f"--aggregator {aggregator} gives mixtures; use one of "
                         f"{', '.join(GAUSSIAN_AGGREGATORS)}")
    if out["beta_norm"] is not None:
        if getattr(args, "beta_warmup", 0):
            raise ValueError("--beta-norm sets a constant beta per subset; it cannot be "
                             "combined with --beta-warmup")
        if getattr(args, "beta", 1.0) != 1.0:
            raise ValueError("--beta-norm sets beta per subset (beta_norm * D_S / D_z); drop "
                             "--beta")
        if getattr(args, "iwae", False):
            raise ValueError("--beta-norm (a beta per subset) is not supported with --iwae")
    return out


MIXTURE_AGGREGATORS = ("sumpooling-mixture", "selfattention-mixture")
DEFAULT_COMPONENTS = 10  # the Gaussian-mixture prior's clusters, a mixture guide's components


def _components(args, key: str) -> int:
    """``args.<key>``; a configuration saved before the option was split: its
    ``num_components`` (which set both), else :data:`DEFAULT_COMPONENTS`."""
    value = getattr(args, key, None)
    if value is None:
        value = getattr(args, "num_components", None)
    return DEFAULT_COMPONENTS if value is None else int(value)


def component_options(args) -> Dict[str, Optional[int]]:
    """``{"prior_components", "mixture_components"}``: the clusters of the Gaussian-mixture
    prior (``--prior gmm``) and the components of a mixture aggregator
    (:data:`MIXTURE_AGGREGATORS`), defaults filled where they apply and None where they do not.
    ``ValueError`` naming the option when it is given where it does not apply."""
    uses = {"prior_components": getattr(args, "prior", "normal") == "gmm",
            "mixture_components": getattr(args, "aggregator", None) in MIXTURE_AGGREGATORS}
    where = {"prior_components": "--prior gmm",
             "mixture_components": "--aggregator " + " / ".join(MIXTURE_AGGREGATORS)}
    out = {}
    for key, applies in uses.items():
        if getattr(args, key, None) is not None and not applies:
            raise ValueError(f"{_flag(key)} applies to {where[key]} only")
        out[key] = _components(args, key) if applies else None
    return out


def feature_dim(args) -> int:
    """Encoder output size E: ``2 D`` Gaussian-expert parameters for PoE/MoE/MoPoE (and for
    the learnable aggregators on vector data, as the authors' linear study); the aggregator
    width for learnable aggregators on images and text."""
    if args.aggregator in FIXED_AGGREGATORS or args.dataset == "linear-gaussian":
        return 2 * args.latent_dim
    return args.aggregator_width


def make_aggregator(args, features: int, num_modalities: Optional[int] = None) -> nn.Module:
    """The aggregator named by ``--aggregator``, its Gaussian heads parameterised by
    ``--expert-scale`` (``scale=``; configurations saved before the option: softplus).

    ``poe-divide`` is MSNVI's fusion ``PoE(prior_expert="divide")`` (positivity ``"floor"``);
    ``subset-encoders`` is :class:`~pyro_mmvae.guides.SubsetEncoders` (one network per
    non-empty subset of the ``num_modalities`` modalities on the modality encoders' features,
    branches and hidden layer of width ``--aggregator-width``; the M2VAE's) and ``joint``
    :class:`~pyro_mmvae.guides.JointEncoder` (one network on all features concatenated, the
    unobserved zeroed; JMVAE's joint encoder, JMVAE-Zero's only one); these two need
    ``num_modalities``."""
    d, w = args.latent_dim, args.aggregator_width
    scale = getattr(args, "expert_scale", "softplus")
    pooled = dict(hidden_dim=w, pooling_dim=w, scale=scale)
    mixture = dict(pooled, num_components=_components(args, "mixture_components"))
    if args.aggregator in ("subset-encoders", "joint"):
        if num_modalities is None:
            raise ValueError(f"--aggregator {args.aggregator} needs the number of modalities")
        if args.aggregator == "subset-encoders" and num_modalities > MAX_SUBSET_MODALITIES:
            raise ValueError(f"--aggregator subset-encoders builds 2^M - 1 networks: "
                             f"{2 ** num_modalities - 1} for the {num_modalities} modalities "
                             f"of this dataset (at most {MAX_SUBSET_MODALITIES} modalities); "
                             "lower --num-modalities or choose another --aggregator")
    return {
        "poe": lambda: PoE(scale=scale),
        "poe-divide": lambda: PoE(prior_expert="divide", scale=scale),
        "moe": lambda: MoE(scale=scale),
        "mopoe": lambda: MoPoE(scale=scale),
        "sumpooling": lambda: SumPooling(features, d, **pooled),
        "selfattention": lambda: SelfAttention(features, d, **pooled),
        "sumpooling-mixture": lambda: SumPoolingMixture(features, d, **mixture),
        "selfattention-mixture": lambda: SelfAttentionMixture(features, d, **mixture),
        "subset-encoders": lambda: SubsetEncoders(features, d, num_modalities, branch_dim=w,
                                                  hidden=(w,), scale=scale),
        "joint": lambda: JointEncoder(features, d, num_modalities, hidden=(w,), scale=scale),
    }[args.aggregator]()


def build_guide(args, data: PreparedData) -> MultimodalGuide:
    """``MultimodalGuide`` with one encoder per modality (by kind) and the aggregator (for
    ``subset-encoders`` and ``joint`` the per-modality encoders give the features that every
    subset's network, or the joint one, reads)."""
    e = feature_dim(args)
    encoders = {}
    for m, kind in data.kinds.items():
        shape = data.modality_shapes[m]
        if kind == "image":
            encoders[m] = ConvImageEncoder(shape, e, channels=tuple(args.channels))
        elif kind == "text":
            encoders[m] = TextEncoder(shape[0], e, alphabet_size=shape[1])
        else:
            encoders[m] = MLPEncoder(shape[0], e, hidden=tuple(args.hidden))
    return MultimodalGuide(encoders, make_aggregator(args, e, len(encoders)))


def build_prior(args) -> nn.Module:
    if args.prior == "gmm":
        return GaussianMixturePrior(_components(args, "prior_components"), args.latent_dim)
    return StandardNormalPrior(args.latent_dim)


def build_model(args, data: PreparedData) -> nn.Module:
    """The dataset's own model if it has one, else ``MultimodalModel`` with one decoder per
    modality: images through :class:`~pyro_mmvae.models.ConvImageDecoder` with the ``--likelihood``
    family (Laplace with MoPoE's fixed scale 0.75 by default), text through a
    :class:`~pyro_mmvae.models.TextDecoder` with a categorical likelihood."""
    spec = DATASETS[args.dataset]
    if spec.build_model is not None:
        if args.prior != "normal":
            raise ValueError(f"--prior {args.prior} is not available for {args.dataset}, whose "
                             "model is the linear-Gaussian one with a N(0, I) prior")
        return spec.build_model(args, data)
    decoders = {}
    for m, kind in data.kinds.items():
        shape = data.modality_shapes[m]
        if kind == "image":
            net = ConvImageDecoder(args.latent_dim, shape, tuple(args.channels)[::-1])
            decoders[m] = {"laplace": lambda n: LaplaceDecoder(n, scale=0.75),
                           "gaussian": lambda n: GaussianDecoder(n, scale=0.75),
                           "bernoulli": BernoulliDecoder}[args.likelihood](net)
        elif kind == "text":
            decoders[m] = CategoricalDecoder(TextDecoder(args.latent_dim, shape[0], shape[1]))
        else:
            raise ValueError(f"modality '{m}': no decoder for kind {kind!r}")
    return MultimodalModel(build_prior(args), decoders)


def likelihood_weights(args, data: PreparedData) -> Optional[Dict[str, float]]:
    """``--likelihood-weights dimension``: MoPoE's λ_m = D_max / D_m (text: one dimension per
    character)."""
    if args.likelihood_weights == "none":
        return None
    text = tuple(m for m, k in data.kinds.items() if k == "text")
    return dimension_likelihood_weights(data.modality_shapes, one_hot=text)


def beta_option(args):
    """``--beta``, or with ``--beta-warmup STEPS > 0`` the schedule
    ``linear_warmup(STEPS, start=0, end=--beta)`` (configurations saved before the option: 0,
    a constant beta). ``ValueError`` naming ``--beta-warmup`` unless it is an int ``>= 0``."""
    steps = getattr(args, "beta_warmup", 0)
    if steps is None:
        steps = 0
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"--beta-warmup must be a non-negative integer (optimisation steps), "
                         f"got {steps!r}")
    return linear_warmup(steps, start=0.0, end=args.beta) if steps else args.beta


def build_loss(args, data: PreparedData):
    """The bound named by ``--bound`` with its options (``beta`` from :func:`beta_option`,
    the bound-specific ones from :func:`bound_options`):

    - ``multisource``: ``MultiSourceELBO(K, objective=--objective)``, ``K`` = 16 unless
      ``--num-particles`` says otherwise;
    - ``recursive``: ``RecursiveMultimodalELBO(alpha=--alpha)``, with ``--beta-norm`` also
      ``beta_norm`` and ``input_dims=data.modality_dims``;
    - ``jmvae``: ``JointMultimodalELBO(alpha=--alpha)`` (and ``--beta-norm`` likewise).
    """
    opts = bound_options(args)
    kwargs = {"beta": beta_option(args), "likelihood_weights": likelihood_weights(args, data)}
    if args.bound == "multisource":
        return MultiSourceELBO(opts["num_particles"], objective=opts["objective"], **kwargs)
    kwargs["iwae"] = args.iwae
    if args.bound in ("recursive", "jmvae"):
        kwargs["alpha"] = opts["alpha"]
        if opts["beta_norm"] is not None:
            kwargs.update(beta_norm=opts["beta_norm"], input_dims=data.modality_dims)
        return BOUNDS[args.bound](opts["num_particles"], **kwargs)
    if args.masking is not None:
        kwargs["masking"] = args.masking
    if args.bound == "mixture":
        kwargs["form"] = opts["mixture_form"]
    return BOUNDS[args.bound](opts["num_particles"], **kwargs)


# --- restoring a run ----------------------------------------------------------------------------


def read_config(run_dir) -> dict:
    """The configuration of a run directory, with a clear error if it is not one."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pyro-mmvae run directory: {path} is "
                                "missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the run cannot be restored") from err
    if not isinstance(config, dict) or "dataset" not in config:
        raise ValueError(f"{path} has no 'dataset' entry; was it written by pyro-mmvae train?")
    return config


# configuration keys that do not change what a run trains: what a resume or an evaluation may set
# anew (the epochs to reach, where to run, the evaluation's sizes) and informational entries;
# a checkpoint must agree with its run's config.json on every other key they both have
RUNTIME_KEYS = ("epochs", "device", "num_threads", "no_progress", "no_evaluate", "output_dir",
                "data_root", "is_samples", "eval_points", "classifier_epochs", "command",
                "dataset_info", "pyro_mmvae_version")


def config_namespace(config: Mapping) -> argparse.Namespace:
    """The command-line namespace saved in a run's ``config.json``. Earlier versions recorded
    ``mixture_form`` (default ``"stratified"``) for every bound; it is dropped where the bound
    is not the mixture bound, which never read it."""
    saved = {k: v for k, v in config.items() if k not in (
        "modality_dims", "num_test", "dataset_info", "pyro_mmvae_version", "num_train",
        "steps_per_epoch", "loss")}
    if saved.get("bound") != "mixture":
        saved.pop("mixture_form", None)
    return argparse.Namespace(**saved)


def load_run(run_dir, device="cpu", data_root=None):
    """``(args, data, model, guide, checkpoint)`` of a trained run, model and guide in eval
    mode on ``device`` with the checkpoint's parameters.

    The built-in image datasets are read from (or rebuilt into) ``data_root``, else the
    ``data_root`` saved in the configuration (runs of older versions, experiments), else the
    default cache (:func:`~pyro_mmvae.data.digits.default_root`): ``pyro-mmvae train`` does not
    record the cache directory, which belongs to the machine, not to the run. The checkpoint
    must pass its checksums and agree with ``config.json`` (outside :data:`RUNTIME_KEYS`);
    :class:`~pyro_mmvae.train.CheckpointError` otherwise."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    args = config_namespace(config)
    if data_root is not None or not hasattr(args, "data_root"):
        args.data_root = data_root
    if args.dataset not in DATASETS:
        raise ValueError(f"{run_dir / CONFIG} names the dataset {args.dataset!r}, which this "
                         f"version does not know (it knows {', '.join(DATASETS)})")
    path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(path, config=config, ignore=RUNTIME_KEYS)  # checked before the data
    data = DATASETS[args.dataset].load(args)
    pyro.set_rng_seed(args.seed)
    model, guide = build_model(args, data), build_guide(args, data)
    model.to(data.dtype)
    guide.to(data.dtype)
    restore_checkpoint(ckpt, model, guide, path=path)
    model.to(device).eval()
    guide.to(device).eval()
    return args, data, model, guide, ckpt
