r"""The typed run configuration: :class:`RunConfig`, one field per ``pyro-mmvae train`` option.

The choice fields are ``Literal`` types of the names in :mod:`pyro_mmvae.registry`; every
default is here, once: a field whose default depends on the dataset, the bound, the prior or
the aggregator is None in the dataclass and :meth:`RunConfig.resolve` fills it (from the
dataset's entry in :data:`~pyro_mmvae.registry.DATASETS`, the bound's in
:data:`~pyro_mmvae.registry.BOUNDS`, ...), after checking every value and every rule between
options; an option that does not apply (to the dataset, the bound, the prior or the
aggregator) is an error when given, and is not recorded. Errors are ``ValueError`` naming the
option as the command line spells it (``--mixture-form ...``). The command line's parser is
built from these fields (choices, checks, defaults, help), so the two cannot disagree.

Serialisation: :meth:`RunConfig.to_dict` / :meth:`RunConfig.from_dict` (and ``to_json`` /
``from_json``) are an exact round trip (``from_dict`` rejects unknown keys);
:meth:`RunConfig.saved` is what a run's ``config.json`` records: the resolved options that
apply, without the machine's cache directory. ``config.json`` also holds the run's *record*
(what the data and the training loop added: ``modality_dims``, ``num_test``, ``dataset_info``,
``pyro_mmvae_version``; :func:`~pyro_mmvae.train.fit`'s ``num_train``, ``steps_per_epoch``,
``loss``, ...): :meth:`RunConfig.from_saved` splits a saved file into the configuration and
that record, converting what earlier versions saved (:data:`LEGACY_KEYS`):

- ``command``, ``output_dir``, ``overwrite``, ``resume``: how that command was invoked, recorded
  with the options until the configuration was typed; dropped (the run directory is where
  ``config.json`` lies);
- ``num_components``, which set both the Gaussian-mixture prior's clusters and the mixture
  aggregators' components before ``--prior-components`` and ``--mixture-components``: the
  value of each of those that applies and was not saved;
- options recorded where they do not apply, at their defaults (``mixture_form`` for every
  bound, the options of other datasets in the experiments' kept runs, ``objective: null``):
  dropped; they were never read;
- dataset and aggregator names in an older spelling: the registry's
  (:func:`~pyro_mmvae.registry.canonical`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import (Any, Dict, Literal, Mapping, NamedTuple, Optional, Tuple, Union,
                    get_args, get_origin, get_type_hints)

from pyro_mmvae import registry
from pyro_mmvae.registry import (AGGREGATORS, BOUNDS, DATASETS, DEFAULT_COMPONENTS,
                                 DEFAULT_DATASET, DEFAULT_NUM_PARTICLES, AggregatorName,
                                 BoundName, DatasetName, Device, ImageLikelihood,
                                 LikelihoodWeights, MaskingName, MixtureForm, Objective,
                                 PriorName, Scale)

from pyro_mmvae.options import (FRACTION, INTEGER, NON_NEGATIVE, NON_NEGATIVE_INT,
                                OPEN_FRACTION, PATH, POSITIVE, POSITIVE_INT, TEXT, option)


def _listing(table) -> str:
    return "; ".join(f"{k}: {v.help}" for k, v in table.items())


@dataclass(frozen=True)
class RunConfig:
    """The configuration of a ``pyro-mmvae train`` run: one field per option (module
    docstring). Fields left at None take their defaults in :meth:`resolve`."""

    # data
    dataset: DatasetName = option(DEFAULT_DATASET, 0, _listing(DATASETS))
    data: Optional[Path] = option(
        None, 0, "your own data (--dataset file, which --data alone implies on the command "
        "line): an .npz archive or a folder; "
        "recorded relative to the working directory, with its SHA-256", PATH, metavar="PATH",
        runtime="resume")
    modality_kinds: Optional[str] = option(
        None, 0, "--data only: kinds of some modalities, e.g. 'a=image,b=vector' (vector, image "
        "or text; the others are inferred from their shapes)", TEXT, metavar="M=KIND,...")
    data_root: Optional[Path] = option(
        None, 0, "cache directory of the built-in image datasets, built there on first use; not "
        "recorded in the run (default: $PYRO_MMVAE_DATA or ~/.cache/pyro_mmvae)", PATH,
        metavar="DIR", runtime="resume", recorded=False)
    image_size: Optional[int] = option(None, 0, "image side of PolyDigits / DigitsSVHNText",
                                       POSITIVE_INT)
    train_points: Optional[int] = option(
        None, 0, "train on the first N training points only (polydigits, digits-svhn-text; for "
        "linear-gaussian set --num-points and --test-fraction; default: all)", POSITIVE_INT,
        metavar="N")
    num_modalities: Optional[int] = option(None, 0, "number of modalities M", POSITIVE_INT)
    num_points: Optional[int] = option(
        None, 0, "data points simulated, before the train/test split", POSITIVE_INT)
    test_fraction: Optional[float] = option(None, 0, "fraction held out as the test split",
                                            FRACTION)
    data_seed: int = option(0, 0, "seed of the data simulation / dataset build", INTEGER)
    # model and guide
    latent_dim: Optional[int] = option(
        None, 1, "latent dimension D (linear-gaussian: also the simulation's)", POSITIVE_INT)
    aggregator: Optional[AggregatorName] = option(None, 1, "guide aggregator: " + _listing(
        AGGREGATORS))
    aggregator_width: Optional[int] = option(
        None, 1, "hidden and pooling width of the learnable aggregators, and the encoders' "
        "feature size for them on images/text", POSITIVE_INT, metavar="W")
    prior: PriorName = option("normal", 1, _listing(registry.PRIORS))
    prior_components: Optional[int] = option(
        None, 1, f"--prior gmm only: clusters of the Gaussian-mixture prior (default: "
        f"{DEFAULT_COMPONENTS})", POSITIVE_INT, metavar="K")
    mixture_components: Optional[int] = option(
        None, 1, f"{' and '.join(registry.MIXTURE_AGGREGATORS)} only: components of the "
        f"mixture aggregator's q(z | x_S) (default: {DEFAULT_COMPONENTS})", POSITIVE_INT,
        metavar="K")
    likelihood: Optional[ImageLikelihood] = option(
        None, 1, "image likelihood; laplace and gaussian with MoPoE's fixed scale 0.75")
    hidden: Optional[Tuple[int, ...]] = option(
        None, 1, "hidden layer sizes of vector-modality encoders", POSITIVE_INT, metavar="H")
    channels: Optional[Tuple[int, ...]] = option(
        None, 1, "channels of the image encoder's stride-2 convolutions, mirrored in the "
        "decoder", POSITIVE_INT, metavar="C")
    expert_scale: Scale = option(
        "softplus", 1, "how the Gaussian heads' raw outputs r give the standard deviation, in "
        "every aggregator: softplus, sigma = min_scale + log(1 + e^r); logvar, r = log sigma^2, "
        "sigma = min_scale + e^(r/2) (MVAE's and MultiVae's encoders)")
    # objective
    bound: BoundName = option("masked", 2, _listing(BOUNDS))
    masking: Optional[MaskingName] = option(
        None, 2, "masking distribution rho over modality subsets (default: the bound's own; "
        "multisource, recursive and jmvae score fixed subsets and take none)")
    objective: Optional[Objective] = option(
        None, 2, "multisource only: ind (independent beliefs, eq. 1), moe (mixture of beliefs), "
        "poe (their product, eqs. 3-4) or hybrid (ind and poe, halves; eq. 5) (default: "
        f"{BOUNDS['multisource'].defaults['objective']})")
    alpha: Optional[float] = option(
        None, 2, "recursive and jmvae only: weight of the KL terms pulling q(z | x_S minus one "
        f"modality) towards q(z | x_S) (default: {BOUNDS['recursive'].defaults['alpha']}, the "
        "M2VAE paper's)", NON_NEGATIVE)
    beta_norm: Optional[float] = option(
        None, 2, "recursive and jmvae only: a beta per subset, beta_S = BETA_NORM * D_S / D_z, "
        "D_S the input size of the subset's modalities (the M2VAE's normalised beta; instead "
        "of --beta; default: off, --beta everywhere)", POSITIVE)
    mixture_form: Optional[MixtureForm] = option(
        None, 2, "mixture bound only: stratified (one draw per mixture component, MMVAE/MoPoE), "
        "average or sampled (one draw from the mixture; cheap for MoPoE, whose 2^M - 1 "
        "components all get decoded otherwise) (default: "
        f"{BOUNDS['mixture'].defaults['mixture_form']})")
    beta: float = option(1.0, 2, "weight of the KL (rate) terms", POSITIVE)
    beta_warmup: int = option(
        0, 2, "KL warm-up: beta rises linearly from 0 at the first optimisation step to --beta "
        "at step STEPS and stays there (linear_warmup; steps are mini-batches, train points // "
        "batch size per epoch; a resumed run continues the schedule); 0 keeps beta constant",
        NON_NEGATIVE_INT, metavar="STEPS")
    likelihood_weights: LikelihoodWeights = option(
        "none", 2, "per-modality likelihood weights: dimension = MoPoE's D_max / D_m")
    num_particles: Optional[int] = option(
        None, 2, "samples per data point in the bound (default: the bound's, "
        f"{BOUNDS['multisource'].defaults['num_particles']} for multisource as the MSNVI "
        f"paper's K, else {DEFAULT_NUM_PARTICLES})", POSITIVE_INT)
    iwae: bool = option(False, 2, "importance-weighted version of the bound (DReG gradients); "
                                  "use with --num-particles > 1")
    # optimisation
    epochs: Optional[int] = option(None, 3, "training epochs; with --resume, the total to reach",
                                   POSITIVE_INT, runtime="resume")
    batch_size: Optional[int] = option(
        None, 3, "mini-batch size; the last incomplete batch is dropped", POSITIVE_INT)
    lr: Optional[float] = option(None, 3, "Adam learning rate", POSITIVE)
    clip_norm: Optional[float] = option(
        None, 3, "clip gradient norms at this value (ClippedAdam; default: no clipping)",
        POSITIVE)
    val_fraction: Optional[float] = option(
        None, 3, "hold out this seeded fraction of the training points and record their loss "
        "after every epoch (default: none)", OPEN_FRACTION)
    early_stopping: Optional[int] = option(
        None, 3, "stop when the validation loss has not improved for PATIENCE epochs and keep "
        "the best epoch's parameters (best.pt); needs --val-fraction", POSITIVE_INT,
        metavar="PATIENCE")
    # evaluation
    no_evaluate: bool = option(
        False, 4, "skip the evaluation after training (run `pyro-mmvae evaluate` later)",
        runtime="command")
    is_samples: Optional[int] = option(
        None, 4, "importance samples of the test log-likelihoods", POSITIVE_INT,
        runtime="resume")
    eval_points: Optional[int] = option(None, 4, "test points used for the evaluation",
                                        POSITIVE_INT, runtime="resume")
    classifier_epochs: Optional[int] = option(
        None, 4, "epochs of the per-modality classifiers trained for coherence", POSITIVE_INT,
        runtime="resume")
    # runtime
    seed: int = option(0, 5, "seed of parameter initialisation, shuffling and sampling",
                       INTEGER)
    device: Device = option("cpu", 5, "where to run", runtime="command")
    num_threads: int = option(
        1, 5, "torch CPU threads; 0 keeps torch's default. One thread is fastest for the small "
        "default networks on a busy machine", INTEGER, metavar="N", runtime="command")
    no_progress: bool = option(False, 5, "hide the progress bar", runtime="command")

    # --- names, serialisation -------------------------------------------------------------

    @staticmethod
    def flag(name: str) -> str:
        """The command line's spelling of a field: ``mixture_form`` -> ``--mixture-form``."""
        return "--" + name.replace("_", "-")

    def to_dict(self) -> Dict[str, Any]:
        """Every field, JSON-ready (paths as strings, tuples as lists)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (str(value) if isinstance(value, Path)
                           else list(value) if isinstance(value, tuple) else value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """The configuration of :meth:`to_dict`'s output (missing fields take their defaults);
        ``ValueError`` naming unknown keys. Values are checked by :meth:`resolve`."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown run option(s) {', '.join(map(repr, unknown))}: a "
                             f"RunConfig has {', '.join(names)}")
        kwargs = dict(values)
        for name, value in values.items():  # JSON's lists and strings
            if isinstance(value, list) and name in TUPLE_FIELDS:
                kwargs[name] = tuple(value)
            elif isinstance(value, str) and field_type(name) is Path:
                kwargs[name] = Path(value)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def to_argv(self, skip=()) -> list:
        """``pyro-mmvae train`` options that give this configuration (the fields that differ
        from their defaults, outside ``skip``)."""
        argv = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in skip or value == f.default:
                continue
            if value is True:
                argv.append(self.flag(f.name))
            else:
                argv += [self.flag(f.name), *map(str, value if isinstance(value, tuple)
                                                 else (value,))]
        return argv

    # --- resolution and validation ----------------------------------------------------------

    def resolve(self) -> "RunConfig":
        """This configuration with every default filled (the dataset's, then the bound's, the
        prior's and the aggregator's), after checking each value (type, choice, range) and
        every rule between options; ``ValueError`` naming the option otherwise. Idempotent."""
        self._check_values()
        dataset = DATASETS[self.dataset]
        skip = self.not_applying()
        config = replace(self, **{k: v for k, v in dataset.defaults.items()
                                  if getattr(self, k) is None and k not in skip})
        bound = BOUNDS[config.bound]
        fill = {k: v for k, v in bound.defaults.items() if getattr(config, k) is None}
        if config.num_particles is None:
            fill.setdefault("num_particles", DEFAULT_NUM_PARTICLES)
        if config.prior_components is None and registry.PRIORS[config.prior].components:
            fill["prior_components"] = DEFAULT_COMPONENTS
        if config.mixture_components is None and AGGREGATORS[config.aggregator].mixture:
            fill["mixture_components"] = DEFAULT_COMPONENTS
        config = replace(config, **fill)
        config._check_rules()
        return config

    def validate(self) -> None:
        """``ValueError`` naming the option for a bad value or combination (:meth:`resolve`)."""
        self.resolve()

    def _check_values(self) -> None:
        for f in fields(self):
            value, names = getattr(self, f.name), choices(f.name)
            if value is None and _optional(f.name):
                continue
            check = f.metadata["check"]
            if names:
                ok, words = value in names, f"one of {list(names)}"
            elif field_type(f.name) is bool:
                ok, words = isinstance(value, bool), "true or false"
            elif f.name in TUPLE_FIELDS:
                ok = isinstance(value, tuple) and len(value) > 0 and all(map(check.ok, value))
                words = "one or more positive integers"
            else:
                ok, words = check.ok(value), check.words
            if not ok:
                raise ValueError(f"{self.flag(f.name)} must be {words}, got {value!r}")

    def not_applying(self) -> Dict[str, str]:
        """``{field: why}`` for the options that do not apply to this configuration (to its
        dataset, bound, prior or aggregator): each must keep its default (None)."""
        out: Dict[str, str] = {}
        dataset = DATASETS[self.dataset]
        for name in registry.DATASET_OPTIONS:
            if name not in dataset.options:
                takers = " / ".join(k for k, d in DATASETS.items() if name in d.options)
                hint = ("; its size is set by --num-points and --test-fraction"
                        if name == "train_points" else "")
                out[name] = (f"{self.flag(name)} does not apply to --dataset {self.dataset} (it "
                             f"is an option of --dataset {takers}){hint}")
        for name, takers in registry.BOUND_OPTIONS.items():
            if self.bound not in takers:
                out[name] = (f"{self.flag(name)} is an option of --bound {' / '.join(takers)} "
                             f"only, not of --bound {self.bound}")
        if not BOUNDS[self.bound].masking:
            out["masking"] = (f"--masking does not apply to --bound {self.bound}, which scores "
                              "a fixed set of subsets (no masking distribution); drop --masking")
        if not BOUNDS[self.bound].iwae:
            out["iwae"] = (f"--iwae does not apply to --bound {self.bound}: its objectives are "
                           "always importance-weighted, with K = --num-particles samples")
        if not registry.PRIORS[self.prior].components:
            takers = " / ".join(k for k, p in registry.PRIORS.items() if p.components)
            out["prior_components"] = f"--prior-components applies to --prior {takers} only"
        aggregator = self.aggregator or dataset.defaults["aggregator"]
        if AGGREGATORS[aggregator].experts:
            out["aggregator_width"] = (f"--aggregator-width does not apply to --aggregator "
                                       f"{aggregator}, which has no network of its own (the "
                                       "encoders give it 2 D Gaussian-expert parameters)")
        if not AGGREGATORS[aggregator].mixture:
            out["mixture_components"] = ("--mixture-components applies to --aggregator "
                                         f"{' / '.join(registry.MIXTURE_AGGREGATORS)} only")
        return out

    def _check_rules(self) -> None:
        """The rules between options of a filled configuration."""
        for name, why in self.not_applying().items():
            if getattr(self, name) != _default(name):
                raise ValueError(why)
        dataset, bound = DATASETS[self.dataset], BOUNDS[self.bound]
        if dataset.build_model is not None and self.prior != "normal":
            raise ValueError(f"--prior {self.prior} is not available for {self.dataset}, whose "
                             f"model ({dataset.display}) has a fixed N(0, I) prior")
        if bound.gaussian_guide and not AGGREGATORS[self.aggregator].gaussian:
            raise ValueError(f"--bound {self.bound} needs a diagonal-Gaussian q(z | x_S) for "
                             f"every subset S (its KL terms between subsets are closed-form), "
                             f"but --aggregator {self.aggregator} gives mixtures; use one of "
                             f"{', '.join(registry.GAUSSIAN_AGGREGATORS)}")
        if self.beta_norm is not None:
            if self.beta_warmup:
                raise ValueError("--beta-norm sets a constant beta per subset; it cannot be "
                                 "combined with --beta-warmup")
            if self.beta != 1.0:
                raise ValueError("--beta-norm sets beta per subset (beta_norm * D_S / D_z); "
                                 "drop --beta")
            if self.iwae:
                raise ValueError("--beta-norm (a beta per subset) is not supported with --iwae")
        if self.early_stopping is not None and self.val_fraction is None:
            raise ValueError("--early-stopping monitors the validation loss: give "
                             "--val-fraction too")
        if self.modality_kinds is not None:
            from pyro_mmvae.data.files import parse_kinds

            parse_kinds(self.modality_kinds)
        registry.check_subset_modalities(self.aggregator, dataset.num_modalities(self))

    # --- config.json ------------------------------------------------------------------------

    def saved(self) -> Dict[str, Any]:
        """What ``config.json`` records of the configuration: the resolved options that apply,
        without those that are not recorded (the cache directory belongs to the machine)."""
        config = self.resolve()
        skip = set(config.not_applying()) | {f.name for f in fields(config)
                                             if not f.metadata["recorded"]}
        out = {k: v for k, v in config.to_dict().items() if k not in skip}
        if out.get("data") is not None and Path(out["data"]).is_absolute():
            out["data"] = os.path.relpath(out["data"])  # no absolute paths in run files
        return out

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> "SavedConfig":
        """The configuration and the record of a saved ``config.json`` (of this version or an
        earlier one: the legacy conversions of the module docstring); ``ValueError`` for a
        dataset this version does not know."""
        names = {f.name for f in fields(cls)}
        options = {k: v for k, v in saved.items() if k in names}
        record = {k: v for k, v in saved.items() if k not in names and k not in LEGACY_KEYS}
        name = options.get("dataset", DEFAULT_DATASET)
        try:
            options["dataset"] = registry.canonical("dataset", name)
        except ValueError:
            raise ValueError(f"names the dataset {name!r}, which this version does not know "
                             f"(it knows {', '.join(DATASETS)})") from None
        if options.get("aggregator") is not None:
            options["aggregator"] = registry.canonical("aggregator", options["aggregator"])
        config = cls.from_dict(options)
        config._check_values()
        dropped = {k: _default(k) for k in config.not_applying()}
        if saved.get("num_components") is not None:
            both = {"prior_components": config.prior_components,
                    "mixture_components": config.mixture_components}
            dropped.update({k: int(saved["num_components"]) for k, v in both.items()
                            if v is None and k not in dropped})
        return SavedConfig(replace(config, **dropped), record)


class SavedConfig(NamedTuple):
    """A saved ``config.json`` split: the run's configuration, and its record (every other
    entry: what the data and the training loop added)."""

    config: RunConfig
    record: Dict[str, Any]


#: keys of earlier versions' ``config.json`` that are neither options nor record: how that
#: command was invoked (module docstring), and ``num_components`` (converted)
LEGACY_KEYS = {"command": "the subcommand, 'train'",
               "output_dir": "the run directory, where config.json lies",
               "overwrite": "whether the command trained afresh over an earlier run",
               "resume": "the run directory a resume continued",
               "num_components": "prior_components and mixture_components, where they apply"}


@lru_cache(maxsize=None)
def _hints() -> Dict[str, Any]:
    return get_type_hints(RunConfig)


def _optional(name: str) -> bool:
    hint = _hints()[name]
    return get_origin(hint) is Union and type(None) in get_args(hint)


def field_type(name: str):
    """A field's type without its ``Optional``."""
    hint = _hints()[name]
    if get_origin(hint) is Union:
        hint = next(a for a in get_args(hint) if a is not type(None))
    return hint


def choices(name: str) -> Tuple[str, ...]:
    """The ``Literal`` choices of a field (``()`` for the others)."""
    return get_args(field_type(name)) if get_origin(field_type(name)) is Literal else ()


def _default(name: str):
    return RunConfig.__dataclass_fields__[name].default


FIELDS = tuple(f.name for f in fields(RunConfig))
#: the fields of several values (``nargs="+"`` on the command line)
TUPLE_FIELDS = tuple(k for k in FIELDS if get_origin(field_type(k)) is tuple)
#: the options a resume or an evaluation may set anew (the others come from the run)
RESUME_OPTIONS = tuple(f.name for f in fields(RunConfig) if f.metadata["runtime"])
#: how one command runs: a resume takes them from its own command line, not from the run
PER_COMMAND = tuple(f.name for f in fields(RunConfig) if f.metadata["runtime"] == "command")


def default_help(name: str) -> str:
    """The default of a field as the command line's help says it: its own, or per dataset
    (``polydigits, digits-svhn-text: 16; linear-gaussian: 5``); ``""`` where the help text
    says it."""
    default = _default(name)
    if isinstance(default, bool):
        return ""
    if default is not None:
        return f"(default: {default})"
    by_value: Dict[str, list] = {}
    for key, entry in DATASETS.items():
        if name in entry.defaults:
            value = entry.defaults[name]
            text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            by_value.setdefault(text, []).append(key)
    return ("(default: " + "; ".join(f"{', '.join(k)}: {v}" for v, k in by_value.items()) + ")"
            if by_value else "")


for _entry in DATASETS.values():  # every dataset gives every dataset-dependent default
    assert set(_entry.defaults) <= set(FIELDS), _entry.name
    assert all(_default(k) is None for k in _entry.defaults), _entry.name
    assert {"latent_dim", "epochs", "batch_size", "lr", "aggregator", "aggregator_width",
            "is_samples"} <= set(_entry.defaults), _entry.name
