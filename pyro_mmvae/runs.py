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

from pyro_mmvae.guides import (ConvImageEncoder, MLPEncoder, MoE, MoPoE, MultimodalGuide, PoE,
                               SelfAttention, SelfAttentionMixture, SumPooling, SumPoolingMixture,
                               TextEncoder)
from pyro_mmvae.models import (GaussianMixturePrior, LinearGaussianModel, MultimodalModel,
                               StandardNormalPrior, dimension_likelihood_weights)
from pyro_mmvae.models.decoders import (BernoulliDecoder, CategoricalDecoder, GaussianDecoder,
                                        LaplaceDecoder)
from pyro_mmvae.models.networks import ConvImageDecoder, TextDecoder
from pyro_mmvae.data import load_digits_svhn_text, load_poly_digits, shared_latent_study
from pyro_mmvae.infer import (MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO, linear_warmup)
from pyro_mmvae.train import CHECKPOINT, CONFIG, load_checkpoint

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


def split(data: Mapping[str, torch.Tensor], test_fraction: float):
    """First ``1 - test_fraction`` of the points for training, the rest for testing."""
    n = next(iter(data.values())).shape[0]
    n_train = n - int(round(n * test_fraction))
    return ({m: x[:n_train] for m, x in data.items()},
            {m: x[n_train:] for m, x in data.items()})


def load_linear_gaussian(args) -> PreparedData:
    """``shared_latent_study`` (seed 004 Table 2 data), split into train and test."""
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
                                        "data_seed": args.data_seed, "cache": str(train.path)},
                          getattr(args, "train_points", None))


def load_digits_svhn_text_data(args) -> PreparedData:
    """DigitsSVHNText (:func:`~pyro_mmvae.data.load_digits_svhn_text`): grey digit, SVHN-like
    digit, text."""
    train, test = load_digits_svhn_text(args.data_root, image_size=args.image_size,
                                        seed=args.data_seed)
    return _from_datasets(train, test, {"dataset": "DigitsSVHNText",
                                        "image_size": args.image_size,
                                        "data_seed": args.data_seed, "cache": str(train.path)},
                          getattr(args, "train_points", None))


def build_linear_gaussian_model(args, data: PreparedData):
    """``LinearGaussianModel`` with one linear decoder per modality and unit noise."""
    return LinearGaussianModel(data.modality_dims, args.latent_dim)


IMAGE_DEFAULTS = dict(latent_dim=16, epochs=30, batch_size=128, lr=1e-3, aggregator="sumpooling",
                      aggregator_width=64, hidden=[64], channels=[32, 64], is_samples=16,
                      eval_points=500)

DATASETS: Dict[str, DatasetSpec] = {
    "polydigits": DatasetSpec(
        load_polydigits, IMAGE_DEFAULTS,
        help="PolyDigits: the PolyMNIST recipe on scikit-learn's bundled digits, 5 image "
             "modalities (3x16x16), 10000 train / 2000 test tuples (default)"),
    "digits-svhn-text": DatasetSpec(
        load_digits_svhn_text_data, IMAGE_DEFAULTS,
        help="DigitsSVHNText: the MNIST-SVHN-Text recipe on the bundled digits (grey digit "
             "1x16x16, SVHN-like colour digit 3x16x16, the class word as 8x71 one-hot text)"),
    "linear-gaussian": DatasetSpec(
        load_linear_gaussian,
        dict(latent_dim=5, epochs=50, batch_size=128, lr=1e-2, aggregator="poe",
             aggregator_width=128, hidden=[128, 128], channels=[32, 64], is_samples=100,
             eval_points=None),
        help="linear-Gaussian shared-latent simulation (seed 004 §5.1): Gaussian modalities "
             "x_m = W_m z + b_m + noise, D_m in 30..59; exact log-likelihoods",
        build_model=build_linear_gaussian_model),
}
DEFAULT_DATASET = "polydigits"

# --- guide, model, bound ------------------------------------------------------------------------

FIXED_AGGREGATORS = ("poe", "moe", "mopoe")
AGGREGATORS = ("poe", "moe", "mopoe", "sumpooling", "selfattention", "sumpooling-mixture",
               "selfattention-mixture")
BOUNDS = {"masked": MaskedMultimodalELBO, "mixture": MixtureMultimodalELBO,
          "subsampled": SubsampledMultimodalELBO}
PRIORS = ("normal", "gmm")


def feature_dim(args) -> int:
    """Encoder output size E: ``2 D`` Gaussian-expert parameters for PoE/MoE/MoPoE (and for
    the learnable aggregators on vector data, as the authors' linear study); the aggregator
    width for learnable aggregators on images and text."""
    if args.aggregator in FIXED_AGGREGATORS or args.dataset == "linear-gaussian":
        return 2 * args.latent_dim
    return args.aggregator_width


def make_aggregator(args, features: int) -> nn.Module:
    """The aggregator named by ``--aggregator``, its Gaussian heads parameterised by
    ``--expert-scale`` (``scale=``; configurations saved before the option: softplus)."""
    d, w = args.latent_dim, args.aggregator_width
    scale = getattr(args, "expert_scale", "softplus")
    pooled = dict(hidden_dim=w, pooling_dim=w, scale=scale)
    mixture = dict(pooled, num_components=args.num_components)
    return {
        "poe": lambda: PoE(scale=scale),
        "moe": lambda: MoE(scale=scale),
        "mopoe": lambda: MoPoE(scale=scale),
        "sumpooling": lambda: SumPooling(features, d, **pooled),
        "selfattention": lambda: SelfAttention(features, d, **pooled),
        "sumpooling-mixture": lambda: SumPoolingMixture(features, d, **mixture),
        "selfattention-mixture": lambda: SelfAttentionMixture(features, d, **mixture),
    }[args.aggregator]()


def build_guide(args, data: PreparedData) -> MultimodalGuide:
    """``MultimodalGuide`` with one encoder per modality (by kind) and the aggregator."""
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
    return MultimodalGuide(encoders, make_aggregator(args, e))


def build_prior(args) -> nn.Module:
    if args.prior == "gmm":
        return GaussianMixturePrior(args.num_components, args.latent_dim)
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
    """The bound named by ``--bound`` with its options (``beta`` from :func:`beta_option`)."""
    kwargs = {"beta": beta_option(args), "iwae": args.iwae,
              "likelihood_weights": likelihood_weights(args, data)}
    if args.masking is not None:
        kwargs["masking"] = args.masking
    if args.bound == "mixture":
        kwargs["form"] = getattr(args, "mixture_form", "stratified")
    return BOUNDS[args.bound](args.num_particles, **kwargs)


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
    if "dataset" not in config:
        raise ValueError(f"{path} has no 'dataset' entry; was it written by pyro-mmvae train?")
    return config


def config_namespace(config: Mapping) -> argparse.Namespace:
    """The command-line namespace saved in a run's ``config.json``."""
    return argparse.Namespace(**{k: v for k, v in config.items() if k not in (
        "modality_dims", "num_test", "dataset_info", "pyro_mmvae_version", "num_train",
        "steps_per_epoch", "loss")})


def load_run(run_dir, device="cpu"):
    """``(args, data, model, guide, checkpoint)`` of a trained run, model and guide in eval
    mode on ``device`` with the checkpoint's parameters."""
    run_dir = Path(run_dir)
    args = config_namespace(read_config(run_dir))
    data = DATASETS[args.dataset].load(args)
    pyro.set_rng_seed(args.seed)
    model, guide = build_model(args, data), build_guide(args, data)
    model.to(data.dtype)
    guide.to(data.dtype)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, model, guide)
    model.to(device).eval()
    guide.to(device).eval()
    return args, data, model, guide, ckpt
