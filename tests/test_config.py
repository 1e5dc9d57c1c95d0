"""The typed run configuration and the registry: JSON round trips, every validation error,
configurations saved by earlier versions, and every value of every option building what it
names (so that e.g. ``--aggregator selfattention`` building a SumPooling, an ignored ``--prior
gmm``, dropped ``--likelihood-weights`` or a hard-coded ``--mixture-form`` fail here)."""

import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import get_args

import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.config import (FIELDS, PER_COMMAND, RESUME_OPTIONS, RunConfig, choices,
                               default_help)
from pyro_mmvae.guides import (JointEncoder, MoE, MoPoE, PoE, SelfAttention,
                               SelfAttentionMixture, SubsetEncoders, SumPooling,
                               SumPoolingMixture)
from pyro_mmvae.infer import (JointMultimodalELBO, MaskedMultimodalELBO, MixtureMultimodalELBO,
                              MultiSourceELBO, RecursiveMultimodalELBO, SubsampledMultimodalELBO)
from pyro_mmvae.infer.schedules import LinearWarmup
from pyro_mmvae.models import (GaussianMixturePrior, LinearGaussianModel, MultimodalModel,
                               StandardNormalPrior)
from pyro_mmvae.models.decoders import (BernoulliDecoder, CategoricalDecoder, GaussianDecoder,
                                        LaplaceDecoder)
from pyro_mmvae import registry
from pyro_mmvae.registry import PreparedData
from pyro_mmvae.runs import build_guide, build_loss, build_model, load_run, read_config

# --- small data of each kind, without loading a dataset -----------------------------------------


def images(n=6):
    """Two image modalities and a text modality, as the image datasets give them."""
    shapes = {"m0": (3, 16, 16), "m1": (1, 16, 16), "text": (8, 71)}
    train = {m: torch.rand(n, *s) for m, s in shapes.items()}
    test = {m: torch.rand(2, *s) for m, s in shapes.items()}
    kinds = {m: "text" if m == "text" else "image" for m in shapes}
    return PreparedData(train, test, kinds)


def vectors(num_modalities=3, n=6):
    train = {f"m{k}": torch.randn(n, 5 + k) for k in range(num_modalities)}
    test = {m: x[:2] for m, x in train.items()}
    return PreparedData(train, test, {m: "vector" for m in train})


IMAGES = dict(dataset="polydigits", latent_dim=3, aggregator_width=8, channels=(4,))
VECTORS = dict(dataset="linear-gaussian", latent_dim=2, hidden=(6,), num_modalities=3)


def image_build(**options):
    """Model, guide and bound of ``IMAGES`` with ``options`` (no ``--aggregator-width`` for
    the expert aggregators, which it does not apply to)."""
    options = {**IMAGES, **options}
    if registry.AGGREGATORS[options.get("aggregator") or "sumpooling"].experts:
        options.pop("aggregator_width")
    config = RunConfig(**options)
    data = images()
    return config.resolve(), build_model(config, data), build_guide(config, data), \
        build_loss(config, data)


def linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


# --- serialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", list(registry.DATASETS))
def test_json_round_trip_for_every_dataset(dataset, tmp_path, monkeypatch):
    extra = {}
    if dataset == "file":  # your own data: a small archive in the working directory
        import numpy as np

        monkeypatch.chdir(tmp_path)
        np.savez("d.npz", a=np.zeros((10, 3)), b=np.ones((10, 2)))
        extra = {"data": Path("d.npz")}
    for config in (RunConfig(dataset=dataset, **extra),
                   RunConfig(dataset=dataset, **extra).resolve()):
        text = config.to_json()
        assert json.loads(text) == config.to_dict()
        assert RunConfig.from_json(text) == config
        assert RunConfig.from_dict(config.to_dict()) == config
    resolved = RunConfig(dataset=dataset, **extra).resolve()
    # what config.json records reads back as the same configuration
    assert RunConfig.from_saved(resolved.saved()).config.resolve() == resolved
    # and the command line that gives it
    assert cli.config_from_argv(resolved.to_argv()) == resolved


def test_round_trip_of_paths_tuples_and_every_kind_of_value():
    config = RunConfig(data_root=Path("/tmp/cache"), channels=(8, 16), train_points=100,
                       aggregator="selfattention-mixture", mixture_components=3, prior="gmm",
                       prior_components=4, bound="mixture", mixture_form="average",
                       masking="iid_half", beta=2.5, beta_warmup=7, iwae=True,
                       num_particles=3, likelihood="bernoulli", clip_norm=1.5,
                       likelihood_weights="dimension", expert_scale="logvar", seed=-3,
                       device="cuda", no_progress=True)
    assert json.loads(config.to_json())["data_root"] == "/tmp/cache"
    assert json.loads(config.to_json())["channels"] == [8, 16]
    assert RunConfig.from_json(config.to_json()) == config
    assert cli.config_from_argv(config.to_argv()) == config
    assert "data_root" not in config.saved()  # the machine's cache, not the run's


def test_saved_records_only_the_options_that_apply():
    saved = RunConfig(dataset="linear-gaussian", bound="recursive").saved()
    assert {"num_points", "num_modalities", "test_fraction", "hidden", "alpha",
            "beta_norm"} <= set(saved)
    assert not {"image_size", "train_points", "channels", "likelihood", "eval_points",
                "classifier_epochs", "data_root", "objective", "mixture_form", "masking",
                "prior_components", "mixture_components"} & set(saved)
    saved = RunConfig(bound="multisource", prior="gmm", aggregator="sumpooling-mixture").saved()
    assert saved["objective"] == "ind" and saved["num_particles"] == 16
    assert saved["prior_components"] == saved["mixture_components"] == 10
    assert "iwae" not in saved and "masking" not in saved


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown run option.*'num_componets'"):
        RunConfig.from_dict({"num_componets": 3})


# --- defaults in one place -----------------------------------------------------------------

@pytest.fixture
def own_data(tmp_path, monkeypatch):
    """A small .npz archive in the working directory, for --dataset file."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.savez("d.npz", a=np.zeros((10, 3)), b=np.ones((10, 2)))
    return Path("d.npz")


def test_dataset_defaults_come_from_the_registry(own_data):
    for name, entry in registry.DATASETS.items():
        resolved = RunConfig(dataset=name, data=own_data if name == "file" else None).resolve()
        for key, value in entry.defaults.items():  # the width: the learnable aggregators'
            expected = None if key in resolved.not_applying() else value
            assert getattr(resolved, key) == expected, (name, key)
        for key in registry.DATASET_OPTIONS:
            if key not in entry.options:
                assert getattr(resolved, key) is None, (name, key)
    # the dataset-dependent defaults are None in the dataclass, each dataset's in the registry
    dependent = {k for d in registry.DATASETS.values() for k in d.defaults}
    assert {"latent_dim", "epochs", "batch_size", "lr", "aggregator", "aggregator_width",
            "is_samples", "eval_points", "channels", "hidden"} <= dependent
    assert all(RunConfig.__dataclass_fields__[k].default is None for k in dependent)
    assert default_help("latent_dim") == ("(default: polydigits, digits-svhn-text: 16; "
                                          "linear-gaussian: 5; file: 8)")
    assert default_help("beta") == "(default: 1.0)"


def test_the_parser_takes_choices_defaults_and_checks_from_the_dataclass():
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values()
                 if a.prog.endswith("train"))
    actions = {a.dest: a for a in train._actions}
    assert set(FIELDS) <= set(actions)
    for f in fields(RunConfig):
        action = actions[f.name]
        assert action.option_strings == [RunConfig.flag(f.name)]
        if choices(f.name):
            assert tuple(action.choices) == choices(f.name), f.name
    # the names of the registry, spelled once: Literal == registry keys
    assert choices("aggregator") == tuple(registry.AGGREGATORS)
    assert choices("bound") == tuple(registry.BOUNDS)
    assert choices("dataset") == tuple(registry.DATASETS)
    assert choices("prior") == tuple(registry.PRIORS)
    assert choices("likelihood") == tuple(registry.LIKELIHOODS)
    assert set(RESUME_OPTIONS) >= set(PER_COMMAND) and "epochs" in RESUME_OPTIONS
    assert "lr" not in RESUME_OPTIONS


def test_resolve_is_idempotent_and_fills_the_bound_defaults():
    for bound, entry in registry.BOUNDS.items():
        resolved = RunConfig(bound=bound).resolve()
        assert resolved.resolve() == resolved
        for key, value in entry.defaults.items():
            assert getattr(resolved, key) == value, (bound, key)
        assert resolved.num_particles == entry.defaults.get("num_particles", 1)


def test_aliases_of_older_spellings():
    assert registry.canonical("aggregator", "sumpooling_mix") == "sumpooling-mixture"
    assert registry.canonical("aggregator", "SumPoolingMixture") == "sumpooling-mixture"
    assert registry.canonical("aggregator", "selfattention_mix") == "selfattention-mixture"
    assert registry.canonical("aggregator", "SelfAttention") == "selfattention"
    assert registry.canonical("aggregator", "poe") == "poe"
    assert registry.canonical("dataset", "digitssvhntext") == "digits-svhn-text"
    assert registry.canonical("dataset", "DigitsSVHNText") == "digits-svhn-text"
    with pytest.raises(ValueError, match="unknown aggregator 'sum'"):
        registry.canonical("aggregator", "sum")
    old = RunConfig.from_saved({"dataset": "digitssvhntext", "aggregator": "sumpooling_mix"})
    assert (old.config.dataset, old.config.aggregator) == ("digits-svhn-text",
                                                           "sumpooling-mixture")


# --- every validation error ------------------------------------------------------------------

ERRORS = [
    # values
    (dict(epochs=0), r"--epochs must be a positive integer, got 0"),
    (dict(epochs=2.0), r"--epochs must be a positive integer"),
    (dict(latent_dim=True), r"--latent-dim must be a positive integer"),
    (dict(beta_warmup=-1), r"--beta-warmup must be a non-negative integer"),
    (dict(lr=0.0), r"--lr must be a positive number"),
    (dict(beta=math.inf), r"--beta must be a positive number"),
    (dict(beta=None), r"--beta must be a positive number, got None"),
    (dict(bound="recursive", alpha=-1.0), r"--alpha must be a finite number >= 0"),
    (dict(dataset="linear-gaussian", test_fraction=1.0), r"--test-fraction must be in \[0, 1\)"),
    (dict(seed=1.5), r"--seed must be an integer"),
    (dict(data_root=3), r"--data-root must be a path"),
    (dict(channels=(4, 0)), r"--channels must be one or more positive integers"),
    (dict(channels=()), r"--channels must be one or more positive integers"),
    (dict(iwae="yes"), r"--iwae must be true or false"),
    (dict(aggregator="sum"), r"--aggregator must be one of \['poe', "),
    (dict(dataset="mnist"), r"--dataset must be one of"),
    (dict(bound="elbo"), r"--bound must be one of"),
    (dict(masking="half"), r"--masking must be one of"),
    (dict(bound="mixture", mixture_form="one"), r"--mixture-form must be one of"),
    (dict(bound="multisource", objective="sum"), r"--objective must be one of"),
    (dict(likelihood="poisson"), r"--likelihood must be one of"),
    (dict(likelihood_weights="equal"), r"--likelihood-weights must be one of"),
    (dict(expert_scale="exp"), r"--expert-scale must be one of"),
    (dict(device="tpu"), r"--device must be one of"),
    (dict(prior="flow"), r"--prior must be one of"),
    # options of other datasets
    (dict(dataset="linear-gaussian", train_points=50),
     r"--train-points does not apply to --dataset linear-gaussian \(it is an option of "
     r"--dataset polydigits / digits-svhn-text\); its size is set by --num-points"),
    (dict(dataset="linear-gaussian", data_root=Path("c")), r"--data-root does not apply"),
    (dict(dataset="linear-gaussian", likelihood="gaussian"), r"--likelihood does not apply"),
    (dict(dataset="linear-gaussian", eval_points=5), r"--eval-points does not apply"),
    (dict(num_points=100), r"--num-points does not apply to --dataset polydigits"),
    (dict(dataset="digits-svhn-text", hidden=(8,)),
     r"--hidden does not apply to --dataset digits-svhn-text"),
    # options of other bounds
    (dict(objective="poe"), r"--objective is an option of --bound multisource only, not of "
                            r"--bound masked"),
    (dict(bound="jmvae", mixture_form="sampled"), r"--mixture-form is an option of --bound "
                                                  r"mixture only, not of --bound jmvae"),
    (dict(bound="multisource", alpha=0.1), r"--alpha is an option of --bound recursive / "
                                           r"jmvae only"),
    (dict(bound="mixture", beta_norm=0.1), r"--beta-norm is an option of --bound recursive"),
    (dict(bound="recursive", masking="all"), r"--masking does not apply to --bound recursive"),
    (dict(bound="jmvae", masking="all"), r"--masking does not apply to --bound jmvae"),
    (dict(bound="multisource", masking="all"), r"--masking does not apply to --bound "
                                               r"multisource"),
    (dict(bound="multisource", iwae=True), r"--iwae does not apply to --bound multisource"),
    # components
    (dict(prior_components=3), r"--prior-components applies to --prior gmm only"),
    (dict(mixture_components=3), r"--mixture-components applies to --aggregator "
                                 r"sumpooling-mixture / selfattention-mixture only"),
    (dict(aggregator="mopoe", mixture_components=3), r"--mixture-components applies"),
    # rules between options
    (dict(dataset="linear-gaussian", prior="gmm"), r"--prior gmm is not available for "
                                                   r"linear-gaussian"),
    (dict(bound="recursive", aggregator="moe"), r"--bound recursive needs a diagonal-Gaussian "
                                                r".* --aggregator moe gives mixtures"),
    (dict(bound="jmvae", aggregator="selfattention-mixture"), r"--bound jmvae needs"),
    (dict(bound="recursive", beta_norm=0.1, beta_warmup=5), r"--beta-norm .* --beta-warmup"),
    (dict(bound="recursive", beta_norm=0.1, beta=2.0), r"--beta-norm .*drop --beta"),
    (dict(bound="jmvae", beta_norm=0.1, iwae=True), r"--beta-norm .* --iwae"),
    (dict(dataset="linear-gaussian", aggregator="subset-encoders", num_modalities=11),
     r"--aggregator subset-encoders builds 2\^M - 1 networks: 2047"),
]


@pytest.mark.parametrize("options,message", ERRORS)
def test_every_validation_error_names_the_option(options, message):
    config = RunConfig(**options)
    with pytest.raises(ValueError, match=message):
        config.resolve()
    with pytest.raises(ValueError, match=message):
        config.validate()


@pytest.mark.parametrize("options,message", [e for e in ERRORS if "must be" not in e[1]])
def test_the_command_line_gives_the_same_errors_before_loading_data(options, message, capsys,
                                                                    monkeypatch):
    def no_data(config):
        raise AssertionError("the data was loaded before the options were checked")

    for entry in registry.DATASETS.values():
        monkeypatch.setattr(entry, "load", no_data)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *RunConfig(**options).to_argv()])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err
    import re
    assert re.search(message, err), err


def test_every_option_that_does_not_apply_somewhere_is_an_error_there(own_data):
    """Each dataset-specific option with each dataset it does not apply to, each bound option
    with each bound that takes none."""
    values = dict(image_size=8, train_points=5, channels=(4,), likelihood="gaussian",
                  classifier_epochs=2, eval_points=5, data_root=Path("c"), num_modalities=2,
                  num_points=50, test_fraction=0.5, hidden=(4,), objective="moe",
                  alpha=0.5, beta_norm=0.5, mixture_form="average", data=own_data,
                  modality_kinds="a=vector")
    for dataset, entry in registry.DATASETS.items():
        for key in registry.DATASET_OPTIONS:
            base = {"data": own_data} if dataset == "file" else {}
            config = RunConfig(dataset=dataset, **{**base, key: values[key]})
            if key in entry.options:
                config.resolve()
            else:
                with pytest.raises(ValueError, match=f"{RunConfig.flag(key)} does not apply"):
                    config.resolve()
    for bound in registry.BOUNDS:
        for key, takers in registry.BOUND_OPTIONS.items():
            config = RunConfig(bound=bound, aggregator="poe", **{key: values[key]})
            if bound in takers:
                config.resolve()
            else:
                with pytest.raises(ValueError, match=f"{RunConfig.flag(key)} is an option"):
                    config.resolve()


# --- configurations saved by earlier versions ---------------------------------------------------

LEGACY = {  # a config.json of an earlier version, written by hand
    "epochs": 30, "batch_size": 128, "lr": 0.001, "clip_norm": None, "seed": 3,
    "device": "cpu", "num_train": 10000, "steps_per_epoch": 78, "loss": "MixtureMultimodalELBO",
    "command": "train", "dataset": "polydigits", "data_root": "/old/cache",
    "image_size": 16, "train_points": None, "num_modalities": 5, "num_points": 5000,
    "test_fraction": 0.2, "data_seed": 0, "latent_dim": 16, "aggregator": "sumpooling_mix",
    "aggregator_width": 64, "prior": "gmm", "num_components": 7, "likelihood": "laplace",
    "hidden": [64], "channels": [32, 64], "bound": "mixture", "masking": None,
    "mixture_form": "sampled", "objective": None, "alpha": None, "beta_norm": None,
    "beta": 2.5, "likelihood_weights": "none", "num_particles": 1, "iwae": False,
    "output_dir": "runs/x", "overwrite": False, "no_evaluate": False, "is_samples": 16,
    "eval_points": 500, "classifier_epochs": 5, "num_threads": 1, "no_progress": False,
    "modality_dims": {"m0": 768}, "num_test": 2000, "dataset_info": {"dataset": "PolyDigits"},
    "pyro_mmvae_version": "0.0.9"}


def test_a_legacy_config_json_is_converted_explicitly():
    config, record = RunConfig.from_saved(LEGACY)
    # fit's and the data's entries are the run's record, the invocation keys are gone
    assert record == {k: LEGACY[k] for k in ("num_train", "steps_per_epoch", "loss",
                                             "modality_dims", "num_test", "dataset_info",
                                             "pyro_mmvae_version")}
    # num_components: the prior's clusters and the mixture aggregator's components
    assert config.aggregator == "sumpooling-mixture"
    assert (config.prior_components, config.mixture_components) == (7, 7)
    # the options of the other dataset, recorded at their defaults, are dropped
    assert (config.num_points, config.num_modalities, config.test_fraction,
            config.hidden) == (None,) * 4
    assert config.mixture_form == "sampled" and config.data_root == Path("/old/cache")
    assert (config.seed, config.beta, config.channels) == (3, 2.5, (32, 64))
    resolved = config.resolve()
    assert resolved.expert_scale == "softplus" and resolved.beta_warmup == 0
    # a mixture_form recorded for another bound (every bound had one) is dropped
    masked = RunConfig.from_saved({**LEGACY, "bound": "masked", "aggregator": "sumpooling",
                                   "prior": "normal"}).config
    assert masked.mixture_form is None and masked.prior_components is None
    assert masked.mixture_components is None and masked.resolve().bound == "masked"
    with pytest.raises(ValueError, match="names the dataset 'mnist'"):
        RunConfig.from_saved({**LEGACY, "dataset": "mnist"})


@pytest.fixture
def legacy_run(tmp_path):
    """A small run whose config.json is rewritten as an earlier version wrote it."""
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "linear-gaussian", "--epochs", "1", "--num-points",
                     "200", "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
                     "--is-samples", "4", "--no-progress", "--no-evaluate", "--output-dir",
                     str(run)]) == 0
    saved = read_config(run)
    saved.update(command="train", output_dir=str(run), overwrite=False, data_root=None,
                 image_size=16, channels=[32, 64], eval_points=None, likelihood="laplace",
                 num_components=10, mixture_form="stratified", objective=None,
                 prior_components=None)
    (run / "config.json").write_text(json.dumps(saved))
    return run


def test_a_legacy_run_is_restored_evaluated_and_resumed(legacy_run, capsys):
    config, data, model, guide, ckpt = load_run(legacy_run)
    assert isinstance(config, RunConfig) and config.mixture_form is None
    assert type(model) is LinearGaussianModel and type(guide.aggregator) is PoE
    assert cli.main(["evaluate", str(legacy_run), "--no-progress"]) == 0
    assert cli.main(["train", "--resume", str(legacy_run), "--epochs", "2", "--no-progress",
                     "--no-evaluate"]) == 0
    rewritten = read_config(legacy_run)  # written again in this version's form
    assert not {"command", "output_dir", "overwrite", "num_components", "mixture_form",
                "image_size", "channels", "eval_points"} & set(rewritten)
    assert rewritten["epochs"] == 2


# --- every value builds what it names ---------------------------------------------------------

AGGREGATOR_TYPES = {"poe": PoE, "poe-divide": PoE, "moe": MoE, "mopoe": MoPoE,
                    "sumpooling": SumPooling, "selfattention": SelfAttention,
                    "sumpooling-mixture": SumPoolingMixture,
                    "selfattention-mixture": SelfAttentionMixture,
                    "subset-encoders": SubsetEncoders, "joint": JointEncoder}


def test_every_aggregator_has_a_test_type():
    assert set(AGGREGATOR_TYPES) == set(get_args(registry.AggregatorName))


@pytest.mark.parametrize("aggregator", list(AGGREGATOR_TYPES))
@pytest.mark.parametrize("width", [8, 12])
def test_aggregator_builds_its_type_and_widths(aggregator, width):
    config, _, guide, _ = image_build(aggregator=aggregator, aggregator_width=width,
                                      **({"mixture_components": 3}
                                         if "mixture" in aggregator else {}))
    agg = guide.aggregator
    assert type(agg) is AGGREGATOR_TYPES[aggregator]
    expert = aggregator in ("poe", "poe-divide", "moe", "mopoe")
    # encoders: Gaussian-expert parameters for the fixed aggregators, else the width
    assert all(e.out_dim == (2 * config.latent_dim if expert else width)
               for e in guide.encoders.values() if hasattr(e, "out_dim"))
    if aggregator == "poe-divide":
        assert agg.prior_expert == "divide" and agg.positivity == "floor"
    if aggregator == "poe":
        assert agg.prior_expert is True
    if aggregator.startswith("sumpooling"):  # chi: E -> W -> W -> W (pooling width W)
        assert [(lin.in_features, lin.out_features) for lin in linears(agg.chi)] == [
            (width, width), (width, width), (width, width)]
    if aggregator.startswith("selfattention"):  # chi: E -> W -> W; 4 heads of 256 / 4
        assert [(lin.in_features, lin.out_features) for lin in linears(agg.chi)] == [
            (width, width), (width, width)]
        (block,) = agg.blocks
        assert (block.num_heads, block.q.in_features, block.q.out_features,
                block.mlp[0].out_features) == (4, width, 256, 256)
    if aggregator in ("sumpooling", "selfattention"):
        assert agg.num_components is None
    if "mixture" in aggregator:
        assert agg.num_components == 3
    if aggregator == "subset-encoders":
        assert agg.num_modalities == 3 and agg.latent_dim == config.latent_dim
        assert agg.branch_weight.shape[:2] == (7, 3)  # one network per non-empty subset
    if aggregator == "joint":  # one network on the 3 modalities' features, hidden layer W
        assert agg.num_modalities == 3
        assert [(lin.in_features, lin.out_features) for lin in linears(agg)] == [
            (3 * width, width), (width, 2 * config.latent_dim)]


@pytest.mark.parametrize("aggregator", ["poe", "poe-divide", "moe", "mopoe"])
def test_aggregator_width_is_an_error_where_it_builds_nothing(aggregator):
    with pytest.raises(ValueError, match="--aggregator-width does not apply to --aggregator"):
        RunConfig(**IMAGES, aggregator=aggregator).resolve()
    resolved = RunConfig(dataset="polydigits", aggregator=aggregator).resolve()
    assert resolved.aggregator_width is None and "aggregator_width" not in resolved.saved()
    # a config.json of an earlier version recorded the dataset's width: it still loads
    old = RunConfig.from_saved(dict(dataset="polydigits", aggregator=aggregator,
                                    aggregator_width=64)).config
    assert old.aggregator_width is None and old.resolve().aggregator == aggregator


def test_build_aggregator_gives_each_size_to_its_network():
    sizes = registry.AggregatorSizes(width=6, pooling_width=10, attention_width=12,
                                     mlp_width=14, num_heads=3, num_components=2,
                                     scale="logvar", min_scale=0.02)
    agg = registry.build_aggregator("selfattention_mix", 5, 4, 3, sizes)  # an older spelling
    assert type(agg) is SelfAttentionMixture and agg.num_components == 2
    assert (agg.scale, agg.min_scale, agg.chi.in_dim, agg.chi.out_dim) == ("logvar", 0.02, 5, 10)
    assert [lin.out_features for lin in linears(agg.chi)] == [6, 10]
    (block,) = agg.blocks
    assert (block.num_heads, block.q.out_features, block.mlp[0].out_features) == (3, 12, 14)
    pooled = registry.build_aggregator("sumpooling", 5, 4, sizes=sizes)
    assert [lin.out_features for lin in linears(pooled.chi)] == [6, 6, 10]
    assert [lin.out_features for lin in linears(pooled.rho)][:2] == [6, 6]
    poe = registry.build_aggregator("poe", 8, 4, sizes=sizes)
    assert type(poe) is PoE and (poe.scale, poe.min_scale) == ("logvar", 0.02)
    # the defaults are the classes' own
    assert {k: v for k, v in vars(registry.build_aggregator("selfattention", 5, 4)).items()
            if k in ("min_scale", "scale")} == {"min_scale": 1e-3, "scale": "softplus"}
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        registry.build_aggregator("nope", 5, 4)


@pytest.mark.parametrize("components", [2, 5])
def test_mixture_components_reach_both_mixture_aggregators(components):
    for aggregator in registry.MIXTURE_AGGREGATORS:
        _, _, guide, _ = image_build(aggregator=aggregator, mixture_components=components)
        assert guide.aggregator.num_components == components
    _, _, guide, _ = image_build(aggregator="sumpooling-mixture")
    assert guide.aggregator.num_components == registry.DEFAULT_COMPONENTS


@pytest.mark.parametrize("prior,components", [("normal", None), ("gmm", None), ("gmm", 4)])
def test_prior_builds_its_type(prior, components):
    config, model, _, _ = image_build(prior=prior, prior_components=components)
    assert type(model) is MultimodalModel
    if prior == "normal":
        assert type(model.prior) is StandardNormalPrior
    else:
        assert type(model.prior) is GaussianMixturePrior
        assert model.prior.num_components == (components or registry.DEFAULT_COMPONENTS)
        assert model.prior.latent_dim == config.latent_dim == 3


@pytest.mark.parametrize("likelihood,decoder", [("laplace", LaplaceDecoder),
                                                ("gaussian", GaussianDecoder),
                                                ("bernoulli", BernoulliDecoder)])
def test_likelihood_builds_its_decoders(likelihood, decoder):
    _, model, _, _ = image_build(likelihood=likelihood)
    for m in ("m0", "m1"):
        assert type(model.decoders[m]) is decoder
        if likelihood != "bernoulli":
            assert float(model.decoders[m].scale) == pytest.approx(0.75)
    assert type(model.decoders["text"]) is CategoricalDecoder


@pytest.mark.parametrize("weights", ["none", "dimension"])
@pytest.mark.parametrize("bound", list(registry.BOUNDS))
def test_likelihood_weights_reach_every_bound(weights, bound):
    _, _, _, loss = image_build(bound=bound, likelihood_weights=weights,
                                aggregator="sumpooling")
    if weights == "none":
        assert not loss.likelihood_weights
    else:  # MoPoE's D_max / D_m, text one dimension per character
        assert loss.likelihood_weights == pytest.approx({"m0": 1.0, "m1": 3.0, "text": 96.0})


BOUND_TYPES = {"masked": MaskedMultimodalELBO, "mixture": MixtureMultimodalELBO,
               "subsampled": SubsampledMultimodalELBO, "multisource": MultiSourceELBO,
               "recursive": RecursiveMultimodalELBO, "jmvae": JointMultimodalELBO}


@pytest.mark.parametrize("bound", list(BOUND_TYPES))
def test_bound_builds_its_type_and_options(bound):
    assert set(BOUND_TYPES) == set(registry.BOUNDS)
    config, _, _, loss = image_build(bound=bound, beta=0.5, num_particles=3)
    assert type(loss) is BOUND_TYPES[bound]
    assert loss.num_particles == 3 and loss.beta == 0.5
    if bound == "multisource":
        assert loss.objective == "ind" and loss.iwae
    if bound in ("recursive", "jmvae"):
        assert loss.alpha == 0.01 and loss.beta_norm is None
    if bound == "mixture":
        assert loss.form == "stratified"


@pytest.mark.parametrize("form", get_args(registry.MixtureForm))
def test_mixture_form_builds_the_named_estimator(form):
    for aggregator in ("moe", "mopoe", "sumpooling"):
        _, _, _, loss = image_build(bound="mixture", mixture_form=form, aggregator=aggregator)
        assert type(loss) is MixtureMultimodalELBO and loss.form == form


@pytest.mark.parametrize("masking", get_args(registry.MaskingName))
def test_masking_reaches_every_bound_that_draws_subsets(masking):
    for bound, entry in registry.BOUNDS.items():
        if entry.masking:
            _, _, _, loss = image_build(bound=bound, masking=masking)
            assert loss.masking_name == masking, bound
    defaults = {b: image_build(bound=b)[3].masking_name
                for b, e in registry.BOUNDS.items() if e.masking}
    assert defaults == {"masked": "iid_half", "mixture": "all", "subsampled": "mvae"}


@pytest.mark.parametrize("objective", get_args(registry.Objective))
def test_objective_builds_the_named_msnvi_objective(objective):
    _, _, _, loss = image_build(bound="multisource", objective=objective)
    assert type(loss) is MultiSourceELBO and loss.objective == objective
    assert loss.num_particles == 16


@pytest.mark.parametrize("bound", ["recursive", "jmvae"])
@pytest.mark.parametrize("alpha,beta_norm", [(0.0, None), (0.5, 0.02)])
def test_alpha_and_beta_norm(bound, alpha, beta_norm):
    data = images()
    config = RunConfig(**IMAGES, bound=bound, alpha=alpha, beta_norm=beta_norm)
    loss = build_loss(config, data)
    assert loss.alpha == alpha and loss.beta_norm == beta_norm
    if beta_norm is not None:
        assert dict(loss.input_dims) == data.modality_dims


@pytest.mark.parametrize("iwae", [False, True])
def test_iwae_reaches_the_bound(iwae):
    for bound in ("masked", "mixture", "subsampled", "recursive"):
        _, _, _, loss = image_build(bound=bound, iwae=iwae, num_particles=2)
        assert loss.iwae is iwae, bound


def test_beta_warmup_builds_the_schedule():
    _, _, _, loss = image_build(beta=2.0, beta_warmup=10)
    assert isinstance(loss.beta_schedule, LinearWarmup)
    assert [loss.beta_schedule(k) for k in (0, 5, 10)] == [0.0, 1.0, 2.0]
    assert image_build(beta=2.0)[3].beta_schedule is None


@pytest.mark.parametrize("scale", get_args(registry.Scale))
def test_expert_scale_reaches_the_heads(scale):
    for aggregator in registry.AGGREGATORS:
        _, _, guide, _ = image_build(aggregator=aggregator, expert_scale=scale)
        assert guide.aggregator.scale == scale, aggregator


def test_widths_of_encoders_and_decoders():
    config, model, guide, _ = image_build(channels=(4, 6), latent_dim=5)
    convs = [m for m in guide.encoders["m0"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 6]
    deconvs = [m for m in model.decoders["m0"].modules()
               if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.in_channels for c in deconvs][0] == 6  # mirrored
    assert model.prior.latent_dim == guide.aggregator.latent_dim == 5
    # vector modalities: MLP encoders with --hidden, 2 D expert features for every aggregator
    data = vectors()
    for aggregator in ("poe", "sumpooling"):
        width = {} if aggregator == "poe" else {"aggregator_width": 8}
        config = RunConfig(**{**VECTORS, "hidden": (7, 9), **width}, aggregator=aggregator)
        guide = build_guide(config, data)
        sizes = [lin.out_features for lin in linears(guide.encoders["m0"])]
        assert sizes == [7, 9, 2 * config.latent_dim]
        assert type(build_model(config, data)) is LinearGaussianModel


def test_the_command_line_builds_what_each_option_names(tmp_path, monkeypatch):
    """Through ``pyro-mmvae train`` itself: the model, guide, bound and fit's arguments."""
    seen = {}

    def fit(model, guide, loss, train, **kwargs):
        seen.update(model=model, guide=guide, loss=loss, **kwargs)
        return {"loss": [1.0], "epoch_time": [0.1]}

    monkeypatch.setattr(cli, "fit", fit)
    monkeypatch.setattr(cli, "load_data", lambda config: images(n=64))
    argv = ["train", "--aggregator", "selfattention", "--prior", "gmm", "--prior-components",
            "4", "--likelihood-weights", "dimension", "--bound", "mixture", "--mixture-form",
            "sampled", "--masking", "iid_half", "--latent-dim", "3", "--aggregator-width", "8",
            "--channels", "4", "--likelihood", "gaussian", "--epochs", "3", "--batch-size",
            "16", "--lr", "0.02", "--clip-norm", "5", "--seed", "4", "--beta", "0.5",
            "--no-evaluate", "--no-progress", "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert type(seen["guide"].aggregator) is SelfAttention
    assert type(seen["model"].prior) is GaussianMixturePrior
    assert seen["model"].prior.num_components == 4
    assert type(seen["model"].decoders["m0"]) is GaussianDecoder
    loss = seen["loss"]
    assert type(loss) is MixtureMultimodalELBO and loss.form == "sampled"
    assert loss.masking_name == "iid_half" and loss.beta == 0.5
    assert loss.likelihood_weights == pytest.approx({"m0": 1.0, "m1": 3.0, "text": 96.0})
    assert (seen["epochs"], seen["batch_size"], seen["lr"], seen["clip_norm"],
            seen["seed"], seen["progress"]) == (3, 16, 0.02, 5.0, 4, False)
    recorded = seen["config"]
    assert (recorded["aggregator"], recorded["prior"], recorded["prior_components"],
            recorded["likelihood_weights"], recorded["mixture_form"]) == (
        "selfattention", "gmm", 4, "dimension", "sampled")
    assert RunConfig.from_saved(recorded).config.resolve() == replace(
        cli.config_from_argv(argv[1:-2]), data_root=None).resolve()
