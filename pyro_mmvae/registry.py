r"""The one registry of a run's names: datasets, aggregators, priors, bounds, likelihoods.

Every name a run configuration (:class:`~pyro_mmvae.config.RunConfig`) can hold is spelled once,
here, in the command line's hyphenated spelling (``sumpooling-mixture``, ``digits-svhn-text``),
as a ``Literal`` type and as the key of its entry; an entry says what the name builds and which
options go with it. The ``Literal`` types of the names that other modules own (masking
distributions, mixture-bound forms, MSNVI objectives, image likelihoods) are imported from
there. Older spellings that saved runs and results use are aliases, mapped in one place
(:data:`ALIASES`, :func:`canonical`).

- :data:`DATASETS`: how to load a dataset into :class:`PreparedData`, its defaults of the
  dataset-dependent options and which dataset-specific options apply to it;
- :data:`AGGREGATORS`: how to build each guide aggregator from a configuration
  (:func:`build_aggregator` with explicit :class:`AggregatorSizes`, :func:`make_aggregator`
  from a configuration; the same network wherever it is built: the command line, the
  experiments, the benchmarks) and what it is (Gaussian or mixture ``q(z | x_S)``,
  learnable, ...);
- :data:`PRIORS` (:func:`build_prior`), :data:`BOUNDS` (the bound's class, the bound-specific
  options it takes and their defaults) and :data:`LIKELIHOODS` (the image decoders).

The builders take a resolved configuration (:meth:`~pyro_mmvae.config.RunConfig.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Callable, Dict, Literal, Mapping, Optional, Tuple,
                    get_args)

import torch
from torch import nn

from pyro_mmvae.data import load_digits_svhn_text, load_poly_digits, shared_latent_study
from pyro_mmvae.guides import (JointEncoder, MoE, MoPoE, PoE, SelfAttention,
                               SelfAttentionMixture, SubsetEncoders, SumPooling,
                               SumPoolingMixture)
from pyro_mmvae.guides.aggregators import SCALES
from pyro_mmvae.infer import (MASKINGS, JointMultimodalELBO, MaskedMultimodalELBO,
                              MixtureMultimodalELBO, MultiSourceELBO, RecursiveMultimodalELBO,
                              SubsampledMultimodalELBO)
from pyro_mmvae.infer.masking import MaskingName
from pyro_mmvae.infer.mixture_elbo import Form as MixtureForm
from pyro_mmvae.infer.multisource import OBJECTIVES, Objective
from pyro_mmvae.infer.recursive_elbo import DEFAULT_ALPHA
from pyro_mmvae.models import GaussianMixturePrior, LinearGaussianModel, StandardNormalPrior
from pyro_mmvae.models.decoders import BernoulliDecoder, GaussianDecoder, LaplaceDecoder
from pyro_mmvae.models.networks import ImageLikelihood

if TYPE_CHECKING:  # the configuration imports this module
    from pyro_mmvae.config import RunConfig

DatasetName = Literal["polydigits", "digits-svhn-text", "linear-gaussian", "file"]
AggregatorName = Literal["poe", "poe-divide", "moe", "mopoe", "sumpooling", "selfattention",
                         "sumpooling-mixture", "selfattention-mixture", "subset-encoders",
                         "joint"]
PriorName = Literal["normal", "gmm"]
BoundName = Literal["masked", "mixture", "subsampled", "multisource", "recursive", "jmvae"]
Scale = Literal["softplus", "logvar"]
LikelihoodWeights = Literal["none", "dimension"]
Device = Literal["cpu", "cuda"]

__all__ = ["AggregatorName", "BoundName", "DatasetName", "Device", "ImageLikelihood",
           "LikelihoodWeights", "MaskingName", "MixtureForm", "Objective", "PriorName", "Scale",
           "PreparedData", "DATASETS", "AGGREGATORS", "PRIORS", "BOUNDS", "LIKELIHOODS",
           "ALIASES", "canonical", "AggregatorSizes", "build_aggregator", "make_aggregator",
           "build_prior"]

# the names other modules own must agree with their tables
assert set(get_args(MaskingName)) == set(MASKINGS), "MaskingName and MASKINGS disagree"
assert get_args(Objective) == tuple(OBJECTIVES) and get_args(Scale) == tuple(SCALES)


def _keyed(names, entries) -> dict:
    """``{entry.name: entry}`` in the order of the ``Literal`` ``names``, which the entries must
    spell exactly."""
    table = {e.name: e for e in entries}
    if tuple(table) != get_args(names):
        raise AssertionError(f"registry entries {tuple(table)} != {get_args(names)}")
    return table


# --- datasets ---------------------------------------------------------------------------------

@dataclass
class PreparedData:
    """A dataset split into train and test, ``{modality: (N, ...)}`` each.

    ``kinds`` says how each modality is encoded and decoded (``"vector"``, ``"image"`` or
    ``"text"``); labels are None for unlabelled data (then coherence and latent classification
    are skipped); ``info`` is recorded in ``config.json``.
    """

    train: Dict[str, torch.Tensor]
    test: Dict[str, torch.Tensor]
    kinds: Dict[str, str]
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    num_classes: Optional[int] = None
    info: Dict[str, object] = field(default_factory=dict)
    #: ``{modality: (N,)}`` bool, True where observed (None: every modality everywhere)
    train_mask: Optional[Dict[str, torch.Tensor]] = None
    test_mask: Optional[Dict[str, torch.Tensor]] = None

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


def split(data: Mapping[str, torch.Tensor], test_fraction: float):
    """First ``1 - test_fraction`` of the points for training, the rest for testing."""
    n = next(iter(data.values())).shape[0]
    n_train = n - int(round(n * test_fraction))
    return ({m: x[:n_train] for m, x in data.items()},
            {m: x[n_train:] for m, x in data.items()})


def load_linear_gaussian(config: RunConfig) -> PreparedData:
    """``shared_latent_study`` (the Table 2 data of Hirt et al.), split into train and test."""
    sim = shared_latent_study(num_points=config.num_points, num_modalities=config.num_modalities,
                              latent_dim=config.latent_dim, seed=config.data_seed)
    train, test = split(sim.data, config.test_fraction)
    return PreparedData(train, test, {m: "vector" for m in train},
                        info={"generator": "shared_latent_study", "data_seed": config.data_seed})


def load_file(config: RunConfig) -> PreparedData:
    """``--data PATH``: your own data (:func:`~pyro_mmvae.data.files.read_multimodal`), the
    last ``--test-fraction`` of its data points held out for the test split."""
    from pyro_mmvae.data.files import parse_kinds, read_multimodal

    if config.data is None:
        raise ValueError("--dataset file needs --data PATH (an .npz archive or a folder)")
    dataset, kinds = read_multimodal(config.data, parse_kinds(config.modality_kinds))
    n = len(dataset.labels) if dataset.labels is not None else \
        next(iter(dataset.mask.values())).shape[0]
    n_train = n - int(round(n * config.test_fraction))
    if not 1 <= n_train < n:
        raise ValueError(f"--test-fraction {config.test_fraction} of {n} data points leaves "
                         f"{n_train} for training; both splits need data points")

    def part(tensors, rows):
        return None if tensors is None else {m: x[rows] for m, x in tensors.items()}

    train, test = slice(0, n_train), slice(n_train, n)
    labels = dataset.labels
    return PreparedData(part(dataset.data, train), part(dataset.data, test), kinds,
                        None if labels is None else labels[train],
                        None if labels is None else labels[test],
                        num_classes=None if labels is None else int(labels.max()) + 1,
                        info=dict(dataset.info), train_mask=part(dataset.mask, train),
                        test_mask=part(dataset.mask, test))


def _count_modalities(config: RunConfig) -> int:
    """The number of modalities of ``--data`` (for the checks before loading), from the names
    in the file alone: every ``resolve()`` asks, so the values are not read here."""
    from pyro_mmvae.data.files import modality_names

    if config.data is None:
        raise ValueError("--dataset file needs --data PATH (an .npz archive or a folder)")
    return len(modality_names(config.data))


def _images(loader, name: str) -> Callable[[RunConfig], PreparedData]:
    """The loader of a built-in image/text dataset; ``--train-points N`` keeps the first N
    training points."""

    def load(config: RunConfig) -> PreparedData:
        train, test = loader(config.data_root, image_size=config.image_size,
                             seed=config.data_seed)
        kinds = {m: "text" if m == "text" else "image" for m in train.data}
        keep = slice(None) if config.train_points is None else slice(0, config.train_points)
        info = {"dataset": name, "image_size": config.image_size, "data_seed": config.data_seed,
                "cache": train.path.name}
        return PreparedData({m: x[keep] for m, x in train.data.items()}, dict(test.data),
                            kinds, train.labels[keep], test.labels, num_classes=10, info=info)

    load.__doc__ = f"{name}: the built-in dataset, from (or built into) ``--data-root``."
    return load


@dataclass
class DatasetEntry:
    """A ``--dataset``: its loader, the defaults of the dataset-dependent options (those left
    at None in :class:`~pyro_mmvae.config.RunConfig`), the dataset-specific options that apply
    to it (the others are an error when given, and not recorded), and its own model if it has
    one (then only the ``normal`` prior)."""

    name: str
    display: str
    help: str
    load: Callable[[RunConfig], PreparedData]
    defaults: Mapping[str, object]
    options: Tuple[str, ...]
    num_modalities: Callable[[RunConfig], int]
    build_model: Optional[Callable[[RunConfig, PreparedData], nn.Module]] = None
    #: the encoders output 2 D Gaussian-expert parameters for every aggregator (the authors'
    #: linear study); else the aggregator width for the learnable aggregators
    expert_features: bool = False
    aliases: Tuple[str, ...] = ()


# options that apply to some datasets only: the image datasets' cache, size and training
# subset, the convolution channels, the image likelihood and the classifiers and points of the
# labelled evaluation; the simulation's size and split and the MLP encoders of vector modalities
IMAGE_OPTIONS = ("data_root", "image_size", "train_points", "channels", "likelihood",
                 "classifier_epochs", "eval_points")
SIMULATION_OPTIONS = ("num_modalities", "num_points", "test_fraction", "hidden")
IMAGE_DEFAULTS = dict(latent_dim=16, epochs=30, batch_size=128, lr=1e-3, aggregator="sumpooling",
                      aggregator_width=64, is_samples=16, image_size=16, channels=(32, 64),
                      likelihood="laplace", classifier_epochs=5, eval_points=500)

DATASETS: Dict[str, DatasetEntry] = _keyed(DatasetName, [
    DatasetEntry(
        "polydigits", "PolyDigits",
        "PolyDigits: the PolyMNIST recipe on scikit-learn's bundled digits, 5 image modalities "
        "(3x16x16), 10000 train / 2000 test tuples",
        _images(load_poly_digits, "PolyDigits"), IMAGE_DEFAULTS, IMAGE_OPTIONS, lambda c: 5),
    DatasetEntry(
        "digits-svhn-text", "DigitsSVHNText",
        "DigitsSVHNText: the MNIST-SVHN-Text recipe on the bundled digits (grey digit 1x16x16, "
        "SVHN-like colour digit 3x16x16, the class word as 8x71 one-hot text)",
        _images(load_digits_svhn_text, "DigitsSVHNText"), IMAGE_DEFAULTS, IMAGE_OPTIONS,
        lambda c: 3, aliases=("digitssvhntext",)),
    DatasetEntry(
        "linear-gaussian", "LinearGaussian",
        "linear-Gaussian shared-latent simulation (Hirt et al. §5.1): Gaussian modalities "
        "x_m = W_m z + b_m + noise, D_m in 30..59; exact log-likelihoods",
        load_linear_gaussian,
        dict(latent_dim=5, epochs=50, batch_size=128, lr=1e-2, aggregator="poe",
             aggregator_width=128, is_samples=100, num_modalities=5, num_points=5000,
             test_fraction=0.2, hidden=(128, 128)),
        SIMULATION_OPTIONS, lambda c: c.num_modalities,
        build_model=lambda c, data: LinearGaussianModel(data.modality_dims, c.latent_dim),
        expert_features=True),
    DatasetEntry(
        "file", "File",
        "your own data, --data PATH: an .npz archive of named arrays (labels, mask_<m> and "
        "NaN rows for missing entries optional), a folder of <m>.npy arrays, or a folder per "
        "modality of per-point .npy / .png files (pyro_mmvae.data.files)",
        load_file,
        dict(latent_dim=8, epochs=30, batch_size=128, lr=1e-3, aggregator="sumpooling",
             aggregator_width=64, is_samples=16, test_fraction=0.2, hidden=(128, 128),
             channels=(32, 64), likelihood="gaussian", classifier_epochs=5, eval_points=500),
        ("data", "modality_kinds", "test_fraction", "hidden", "channels", "likelihood",
         "classifier_epochs", "eval_points"), _count_modalities),
])
DEFAULT_DATASET = "polydigits"
#: the options of :class:`~pyro_mmvae.config.RunConfig` that apply to some datasets only
DATASET_OPTIONS = tuple(dict.fromkeys(o for d in DATASETS.values() for o in d.options))

# --- aggregators ------------------------------------------------------------------------------

DEFAULT_COMPONENTS = 10  # the Gaussian-mixture prior's clusters, a mixture guide's components
MAX_SUBSET_MODALITIES = 10  # SubsetEncoders builds 2^M - 1 networks


@dataclass(frozen=True)
class AggregatorSizes:
    """The sizes of an aggregator's networks, each read by the aggregators that have it
    (:func:`build_aggregator`; the defaults are the classes' own): ``width``, the hidden width
    of SumPooling / SelfAttention (their mixtures, the private heads), SubsetEncoders'
    branches and hidden layer, JointEncoder's hidden layer; ``pooling_width`` (default:
    ``width``); SelfAttention's ``attention_width``, ``mlp_width`` (default: the attention
    width) and ``num_heads``; a mixture's ``num_components``; the Gaussian heads' ``scale``
    (``"softplus"`` or ``"logvar"``) above ``min_scale``."""

    width: int = 256
    pooling_width: Optional[int] = None
    attention_width: int = 256
    mlp_width: Optional[int] = None
    num_heads: int = 4
    num_components: int = DEFAULT_COMPONENTS
    scale: str = "softplus"
    min_scale: float = 1e-3

    def heads(self) -> dict:
        """The Gaussian heads' keyword arguments (every aggregator)."""
        return dict(scale=self.scale, min_scale=self.min_scale)

    def pooled(self, attention: bool = False) -> dict:
        """SumPooling's keyword arguments, and SelfAttention's with ``attention``."""
        out = dict(hidden_dim=self.width, pooling_dim=self.pooling_width or self.width,
                   **self.heads())
        if attention:
            out.update(num_heads=self.num_heads, attention_dim=self.attention_width,
                       mlp_dim=self.mlp_width or self.attention_width)
        return out


@dataclass(frozen=True)
class AggregatorEntry:
    """An ``--aggregator``: ``build(features, latent_dim, num_modalities, sizes)`` and what it
    is."""

    name: str
    display: str
    help: str
    build: Callable[[int, int, int, AggregatorSizes], nn.Module]
    gaussian: bool = True  #: q(z | x_S) is one diagonal Gaussian for every subset S
    experts: bool = False  #: reads Gaussian-expert parameters (2 D features), no width
    mixture: bool = False  #: a mixture aggregator, with --mixture-components
    aliases: Tuple[str, ...] = ()


AGGREGATORS: Dict[str, AggregatorEntry] = _keyed(AggregatorName, [
    AggregatorEntry("poe", "PoE", "product of experts with a prior expert",
                    lambda e, d, m, s: PoE(**s.heads()), experts=True),
    AggregatorEntry("poe-divide", "PoE-divide",
                    "MSNVI's product of beliefs with the prior divided out",
                    lambda e, d, m, s: PoE(prior_expert="divide", **s.heads()), experts=True),
    AggregatorEntry("moe", "MoE", "mixture of unimodal experts",
                    lambda e, d, m, s: MoE(**s.heads()), gaussian=False, experts=True),
    AggregatorEntry("mopoe", "MoPoE", "mixture of products over all subsets",
                    lambda e, d, m, s: MoPoE(**s.heads()), gaussian=False, experts=True),
    AggregatorEntry("sumpooling", "SumPooling", "DeepSets",
                    lambda e, d, m, s: SumPooling(e, d, **s.pooled())),
    AggregatorEntry("selfattention", "SelfAttention",
                    "masked self-attention (4 heads, attention and MLP width 256)",
                    lambda e, d, m, s: SelfAttention(e, d, **s.pooled(attention=True))),
    AggregatorEntry("sumpooling-mixture", "SumPoolingMixture",
                    "SumPooling with a mixture q(z | x_S)",
                    lambda e, d, m, s: SumPoolingMixture(e, d, s.num_components, **s.pooled()),
                    gaussian=False, mixture=True, aliases=("sumpooling_mix",)),
    AggregatorEntry("selfattention-mixture", "SelfAttentionMixture",
                    "SelfAttention with a mixture q(z | x_S)",
                    lambda e, d, m, s: SelfAttentionMixture(e, d, s.num_components,
                                                            **s.pooled(attention=True)),
                    gaussian=False, mixture=True, aliases=("selfattention_mix",)),
    AggregatorEntry("subset-encoders", "SubsetEncoders",
                    "M2VAE: one network per non-empty subset, 2^M - 1, on the modality "
                    "encoders' features",
                    lambda e, d, m, s: SubsetEncoders(e, d, m, branch_dim=s.width,
                                                      hidden=(s.width,), **s.heads())),
    AggregatorEntry("joint", "JointEncoder",
                    "one network on all modalities, the unobserved zeroed: JMVAE-Zero with "
                    "--bound mixture --masking zero_augmented",
                    lambda e, d, m, s: JointEncoder(e, d, m, hidden=(s.width,), **s.heads())),
])
MIXTURE_AGGREGATORS = tuple(k for k, a in AGGREGATORS.items() if a.mixture)
GAUSSIAN_AGGREGATORS = tuple(k for k, a in AGGREGATORS.items() if a.gaussian)


def check_subset_modalities(aggregator: str, num_modalities: int) -> None:
    """``ValueError`` naming ``--aggregator subset-encoders`` for more than
    :data:`MAX_SUBSET_MODALITIES` modalities (it builds ``2^M - 1`` networks)."""
    if aggregator == "subset-encoders" and num_modalities > MAX_SUBSET_MODALITIES:
        raise ValueError(f"--aggregator subset-encoders builds 2^M - 1 networks: "
                         f"{2 ** num_modalities - 1} for the {num_modalities} modalities "
                         f"of this dataset (at most {MAX_SUBSET_MODALITIES} modalities); "
                         "lower --num-modalities or choose another --aggregator")


def build_aggregator(name: str, features: int, latent_dim: int, num_modalities: int = 0,
                     sizes: AggregatorSizes = AggregatorSizes()) -> nn.Module:
    """The aggregator ``name`` (any spelling :func:`canonical` knows) on ``features``-
    dimensional modality features, for a ``latent_dim``-dimensional latent and
    ``num_modalities`` modalities (read by ``subset-encoders`` and ``joint`` only), with the
    networks' ``sizes``. The one factory of the command line, the experiments and the
    benchmarks."""
    name = canonical("aggregator", name)
    check_subset_modalities(name, num_modalities)
    return AGGREGATORS[name].build(features, latent_dim, num_modalities, sizes)


def make_aggregator(config: RunConfig, features: int, num_modalities: int) -> nn.Module:
    """The aggregator of a configuration (:func:`build_aggregator`): ``config.aggregator``,
    its Gaussian heads parameterised by ``--expert-scale``, the learnable ones of width
    ``--aggregator-width`` and the mixtures with ``--mixture-components`` components;
    ``poe-divide`` is MSNVI's fusion ``PoE(prior_expert="divide")``."""
    config = config.resolve()
    sizes = AggregatorSizes(width=config.aggregator_width or AggregatorSizes.width,
                            num_components=config.mixture_components or DEFAULT_COMPONENTS,
                            scale=config.expert_scale)
    return build_aggregator(config.aggregator, features, config.latent_dim, num_modalities,
                            sizes)


# --- priors, likelihoods, bounds --------------------------------------------------------------

@dataclass(frozen=True)
class PriorEntry:
    """A ``--prior``: ``build(config)``; ``components``: it takes ``--prior-components``."""

    name: str
    help: str
    build: Callable[[RunConfig], nn.Module]
    components: bool = False


PRIORS: Dict[str, PriorEntry] = _keyed(PriorName, [
    PriorEntry("normal", "N(0, I)", lambda c: StandardNormalPrior(c.latent_dim)),
    PriorEntry("gmm", "learned Gaussian mixture with the optimal cluster factor",
               lambda c: GaussianMixturePrior(c.prior_components, c.latent_dim),
               components=True),
])


def build_prior(config: RunConfig) -> nn.Module:
    """The prior named by ``config.prior`` (``gmm``: ``--prior-components`` clusters)."""
    config = config.resolve()
    return PRIORS[config.prior].build(config)


#: image decoders by ``--likelihood`` (Laplace and Gaussian with MoPoE's fixed scale 0.75)
LIKELIHOODS: Dict[str, Callable[[nn.Module], nn.Module]] = {
    "laplace": lambda net: LaplaceDecoder(net, scale=0.75),
    "gaussian": lambda net: GaussianDecoder(net, scale=0.75),
    "bernoulli": BernoulliDecoder}
assert tuple(LIKELIHOODS) == get_args(ImageLikelihood)


@dataclass(frozen=True)
class BoundEntry:
    """A ``--bound``: its class, the bound-specific options it takes and the defaults of its
    options left at None; ``masking``: it draws subsets from a masking distribution (else it
    scores a fixed set of subsets); ``iwae``: ``--iwae`` applies (``multisource`` always
    importance-weights); ``gaussian_guide``: it needs one diagonal Gaussian ``q(z | x_S)`` per
    subset (closed-form KLs between subsets)."""

    name: str
    help: str
    cls: type
    options: Tuple[str, ...] = ()
    defaults: Mapping[str, object] = field(default_factory=dict)
    masking: bool = True
    iwae: bool = True
    gaussian_guide: bool = False


DEFAULT_NUM_PARTICLES = 1
BOUNDS: Dict[str, BoundEntry] = _keyed(BoundName, [
    BoundEntry("masked", "the masked bound of Hirt et al. (default masking iid_half)",
               MaskedMultimodalELBO),
    BoundEntry("mixture", "the mixture-based bound, MMVAE/MoPoE (default masking all)",
               MixtureMultimodalELBO, ("mixture_form",), {"mixture_form": "stratified"}),
    BoundEntry("subsampled", "MVAE's full + unimodal + random-subset ELBOs (default masking "
               "mvae)", SubsampledMultimodalELBO),
    # MSNVI's K = 16 importance samples and objective L_ind
    BoundEntry("multisource", "MSNVI's importance-weighted objectives, --objective ind, moe, "
               "poe or hybrid, K = 16 samples by default (the paper's fusion: --aggregator "
               "poe-divide)", MultiSourceELBO, ("objective",),
               {"num_particles": 16, "objective": "ind"}, masking=False, iwae=False),
    # the M2VAE's alpha = 1e-2 (its study: alpha <= 1e-2 works, alpha = 1 over-constrains),
    # also for JMVAE-kl
    BoundEntry("recursive", "the M2VAE's recursive objective over every subset, with --alpha "
               "and --beta-norm (a Gaussian aggregator; the paper's: subset-encoders)",
               RecursiveMultimodalELBO, ("alpha", "beta_norm"), {"alpha": DEFAULT_ALPHA},
               masking=False, gaussian_guide=True),
    BoundEntry("jmvae", "JMVAE-kl, the joint ELBO with --alpha KL pulls of the subsets one "
               "modality smaller (a Gaussian aggregator)", JointMultimodalELBO,
               ("alpha", "beta_norm"), {"alpha": DEFAULT_ALPHA}, masking=False,
               gaussian_guide=True),
])
#: option -> the bounds that take it
BOUND_OPTIONS: Dict[str, Tuple[str, ...]] = {
    o: tuple(b for b, e in BOUNDS.items() if o in e.options)
    for o in dict.fromkeys(o for e in BOUNDS.values() for o in e.options)}

# --- aliases -----------------------------------------------------------------------------------

TABLES = {"dataset": DATASETS, "aggregator": AGGREGATORS}
#: older spellings -> the name: each entry's aliases and (any case) its display name
ALIASES: Dict[str, Dict[str, str]] = {
    kind: {alias: name for name, e in table.items()
           for alias in (*e.aliases, e.display.lower()) if alias != name}
    for kind, table in TABLES.items()}


def canonical(kind: str, name: str) -> str:
    """The registry's spelling of a ``kind`` (``"dataset"`` or ``"aggregator"``) name given
    in an older spelling (``sumpooling_mix``, ``SumPoolingMixture``, ``digitssvhntext``), or
    ``name`` itself; ``ValueError`` listing the names for an unknown one."""
    table, lower = TABLES[kind], str(name).lower()
    if name in table or lower in table:
        return name if name in table else lower
    found = ALIASES[kind].get(name, ALIASES[kind].get(lower))
    if found is None:
        raise ValueError(f"unknown {kind} {name!r}: this version knows {', '.join(table)}")
    return found
