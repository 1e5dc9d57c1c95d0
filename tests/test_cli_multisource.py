"""The command line builds and trains MSNVI (``--bound multisource``), the M2VAE (``--bound
recursive``, ``--aggregator subset-encoders``) and JMVAE (``--bound jmvae``, ``--aggregator
joint`` with ``--masking zero_augmented``): each option builds what it names, is recorded in
``config.json`` and rebuilt from it, and a combination that means nothing is an error naming
the option before any data is loaded."""

import argparse
import json
import math
import re

import pytest

from pyro_mmvae import cli
from pyro_mmvae.config import RunConfig
from pyro_mmvae.guides import JointEncoder, PoE, SubsetEncoders
from pyro_mmvae.infer import (JointMultimodalELBO, MaskedMultimodalELBO, MixtureMultimodalELBO,
                              MultiSourceELBO, RecursiveMultimodalELBO)
from pyro_mmvae.runs import (DATASETS, bound_options, build_guide, build_loss, load_data,
                             load_run, read_config)

# 2 modalities of the linear-Gaussian simulation, 160 train points: 5 steps of 32 per epoch
SMALL = ["--dataset", "linear-gaussian", "--num-points", "200", "--num-modalities", "2",
         "--latent-dim", "2", "--hidden", "8", "--is-samples", "4",
         "--batch-size", "32", "--no-progress"]


def parsed(*argv):
    """``train`` options as the command line resolves them (dataset and bound defaults)."""
    return cli.config_from_argv([*SMALL, *argv]).resolve()


def built(*argv, resolve=True):
    """``(config, data, loss, guide)`` for the options ``argv`` (``resolve=False``: the
    configuration as parsed, which the builders resolve themselves)."""
    config = parsed(*argv) if resolve else cli.config_from_argv([*SMALL, *argv])
    data = load_data(config)
    return config, data, build_loss(config, data), build_guide(config, data)


# --- the configuration builds what it names --------------------------------------------------

@pytest.mark.parametrize("objective", ["ind", "moe", "poe", "hybrid"])
def test_multisource_builds_the_named_objective_with_the_papers_k(objective):
    args, _, loss, _ = built("--bound", "multisource", "--objective", objective)
    assert type(loss) is MultiSourceELBO
    assert loss.objective == objective and loss.num_particles == 16
    assert args.num_particles == 16 and args.objective == objective  # what config.json records
    assert loss.estimator == "dreg" and loss.iwae


def test_multisource_defaults_and_explicit_particles():
    _, _, loss, _ = built("--bound", "multisource")
    assert loss.objective == "ind" and loss.num_particles == 16
    _, _, loss, _ = built("--bound", "multisource", "--num-particles", "3")
    assert loss.num_particles == 3
    # build_loss resolves the defaults itself when given the parsed (unresolved) options
    args, _, loss, _ = built("--bound", "multisource", "--objective", "poe", resolve=False)
    assert args.num_particles is None and args.objective == "poe"
    assert (loss.objective, loss.num_particles) == ("poe", 16)


@pytest.mark.parametrize("bound", ["masked", "mixture", "subsampled", "recursive", "jmvae"])
def test_other_bounds_keep_one_particle_by_default(bound):
    args, _, loss, _ = built("--bound", bound)
    assert loss.num_particles == 1 and args.num_particles == 1


def test_recursive_builds_alpha_and_the_full_recursion():
    args, _, loss, _ = built("--bound", "recursive", "--alpha", "0.5")
    assert type(loss) is RecursiveMultimodalELBO
    assert loss.alpha == 0.5 and not loss.top_only and loss.beta_norm is None
    assert args.alpha == 0.5 and args.objective is None
    _, _, loss, _ = built("--bound", "recursive")
    assert loss.alpha == 0.01  # the paper's


def test_beta_norm_takes_the_input_sizes_from_the_data():
    _, data, loss, _ = built("--bound", "recursive", "--beta-norm", "0.02")
    assert loss.beta_norm == 0.02
    assert dict(loss.input_dims) == data.modality_dims
    assert sorted(data.modality_dims) == ["m0", "m1"]
    _, _, loss, _ = built("--bound", "jmvae", "--beta-norm", "0.02")
    assert loss.beta_norm == 0.02 and loss.top_only


def test_jmvae_builds_the_joint_elbo():
    _, _, loss, _ = built("--bound", "jmvae", "--alpha", "0.3")
    assert type(loss) is JointMultimodalELBO
    assert loss.top_only and loss.alpha == 0.3
    _, _, loss, _ = built("--bound", "jmvae")
    assert loss.alpha == 0.01


def test_poe_divide_builds_the_prior_dividing_product():
    _, _, _, guide = built("--aggregator", "poe-divide")
    assert isinstance(guide.aggregator, PoE)
    assert guide.aggregator.prior_expert == "divide" and guide.aggregator.positivity == "floor"
    _, _, _, plain = built("--aggregator", "poe")
    assert plain.aggregator.prior_expert is True


@pytest.mark.parametrize("num_modalities", [2, 3])
def test_subset_encoders_builds_one_network_per_nonempty_subset(num_modalities):
    args, data, _, guide = built("--aggregator", "subset-encoders", "--num-modalities",
                                 str(num_modalities))
    enc = guide.aggregator
    k = 2 ** num_modalities - 1
    assert isinstance(enc, SubsetEncoders) and enc.num_modalities == num_modalities
    assert enc.subsets.shape == (k, num_modalities)
    assert enc.branch_weight.shape[:2] == (k, num_modalities)
    assert all(w.shape[0] == k for w in enc.weights)
    assert enc.latent_dim == args.latent_dim
    # the modality encoders give the features every subset network reads
    x = {m: v[:3] for m, v in data.train.items()}
    feats = [guide.encoders[m](x[m]) for m in guide.modalities]
    assert all(f.shape[-1] == enc.feature_dim for f in feats)


def test_joint_aggregator_builds_the_joint_encoder():
    _, _, _, guide = built("--aggregator", "joint")
    assert isinstance(guide.aggregator, JointEncoder)
    assert guide.aggregator.num_modalities == 2


def test_zero_augmented_masking_reaches_the_mixture_bound():
    _, _, loss, _ = built("--aggregator", "joint", "--bound", "mixture", "--masking",
                          "zero_augmented")
    assert type(loss) is MixtureMultimodalELBO and loss.masking_name == "zero_augmented"


def test_help_lists_the_new_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for word in ("--objective", "--alpha", "--beta-norm", "multisource", "recursive", "jmvae",
                 "poe-divide", "subset-encoders", "zero_augmented"):
        assert word in text, word


# --- end to end: train, record, restore ------------------------------------------------------

CASES = {
    "multisource-poe": (["--bound", "multisource", "--objective", "poe", "--aggregator",
                         "poe-divide"], MultiSourceELBO,
                        {"objective": "poe", "num_particles": 16}, PoE),
    "recursive": (["--bound", "recursive", "--alpha", "0.5", "--beta-norm", "0.05",
                   "--aggregator", "subset-encoders"], RecursiveMultimodalELBO,
                  {"alpha": 0.5, "beta_norm": 0.05, "top_only": False, "num_particles": 1},
                  SubsetEncoders),
    "jmvae": (["--bound", "jmvae", "--aggregator", "subset-encoders"], JointMultimodalELBO,
              {"alpha": 0.01, "top_only": True}, SubsetEncoders),
    "jmvae-zero": (["--bound", "mixture", "--masking", "zero_augmented", "--aggregator",
                    "joint"], MixtureMultimodalELBO, {"masking_name": "zero_augmented"},
                   JointEncoder),
}


@pytest.mark.parametrize("case", list(CASES))
def test_new_bounds_train_end_to_end_and_restore(case, tmp_path):
    argv, loss_type, options, aggregator_type = CASES[case]
    run = tmp_path / case
    assert cli.main(["train", *SMALL, *argv, "--epochs", "3", "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    losses = metrics["train_loss"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    for key in ("train_exact_log_likelihood", "test_is_log_likelihood", "relative_llh_gap"):
        assert math.isfinite(metrics[key]), key

    config = read_config(run)
    from pyro_mmvae.registry import BOUND_OPTIONS
    for key, takers in BOUND_OPTIONS.items():  # only the options of the run's bound, recorded
        assert (key in config) == (config["bound"] in takers), key
    assert "num_particles" in config
    for key in set(options) & set(config):  # the values used, defaults included
        assert config[key] == options[key], key
    # the run is restored with the same guide and the same bound
    args, data, _, guide, ckpt = load_run(run)
    assert ckpt["epoch"] == 3
    assert type(guide.aggregator) is aggregator_type
    loss = build_loss(args, data)
    assert type(loss) is loss_type
    for key, value in options.items():
        assert getattr(loss, key) == value, key
    if case == "recursive":
        assert dict(loss.input_dims) == data.modality_dims
    if case == "multisource-poe":
        assert guide.aggregator.prior_expert == "divide"


def test_resumed_multisource_run_keeps_its_objective(tmp_path, monkeypatch):
    from pyro_mmvae import runs
    losses = []

    def spy(args, data):
        losses.append(runs.build_loss(args, data))
        return losses[-1]

    monkeypatch.setattr(cli, "build_loss", spy)
    run = tmp_path / "run"
    argv = ["train", *SMALL, "--bound", "multisource", "--objective", "hybrid",
            "--num-particles", "4", "--epochs", "1", "--no-evaluate", "--output-dir", str(run)]
    assert cli.main(argv) == 0
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-evaluate",
                     "--no-progress"]) == 0
    assert [(type(x), x.objective, x.num_particles) for x in losses] == [
        (MultiSourceELBO, "hybrid", 4)] * 2


def test_a_configuration_saved_before_the_options_builds_the_old_bound():
    """No objective / alpha / beta_norm keys and ``num_particles`` as then saved."""
    config, data, _, _ = built()
    saved = {k: v for k, v in config.to_dict().items()
             if k not in ("objective", "alpha", "beta_norm")} | {"num_particles": 2}
    old = RunConfig.from_saved(saved).config
    loss = build_loss(old, data)
    assert type(loss) is MaskedMultimodalELBO and loss.num_particles == 2
    assert bound_options(old) == {"objective": None, "alpha": None, "beta_norm": None,
                                  "mixture_form": None, "num_particles": 2}


def test_mixture_form_is_an_option_of_the_mixture_bound_only(capsys):
    """--mixture-form reaches the mixture bound (default stratified) and is an error with
    another bound; configurations of earlier versions, which recorded its default for every
    bound, still load."""
    def opts(**kw):
        return RunConfig(**{"bound": "mixture", "aggregator": "poe", **kw}).resolve()

    assert opts().mixture_form == "stratified"
    assert opts(mixture_form="sampled").mixture_form == "sampled"
    assert opts(bound="masked").mixture_form is None
    with pytest.raises(ValueError, match="--mixture-form is an option of --bound mixture"):
        opts(bound="masked", mixture_form="sampled")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *SMALL, "--bound", "masked", "--mixture-form", "average"])
    assert info.value.code == 2 and "--mixture-form" in capsys.readouterr().err
    assert built("--bound", "mixture", "--mixture-form", "average")[2].form == "average"
    old = RunConfig.from_saved({**built()[0].to_dict(), "mixture_form": "stratified"}).config
    assert old.mixture_form is None and bound_options(old)["mixture_form"] is None
    assert "mixture_form" not in old.saved()


# --- nonsensical combinations: errors naming the option, before any data is loaded -----------

@pytest.mark.parametrize("argv,message", [
    (["--objective", "poe"], "--objective is an option of --bound multisource only"),
    (["--bound", "recursive", "--objective", "ind"], "--objective is an option of --bound "
                                                     "multisource only, not of --bound recursive"),
    (["--alpha", "0.1"], "--alpha is an option of --bound recursive / jmvae only"),
    (["--bound", "multisource", "--alpha", "0.1"], "--alpha is an option of"),
    (["--bound", "mixture", "--beta-norm", "0.1"], "--beta-norm is an option of"),
    (["--bound", "recursive", "--aggregator", "moe"],
     "--bound recursive needs a diagonal-Gaussian .* --aggregator moe gives mixtures"),
    (["--bound", "jmvae", "--aggregator", "mopoe"], "--bound jmvae needs a diagonal-Gaussian"),
    (["--bound", "recursive", "--aggregator", "sumpooling-mixture"],
     "--aggregator sumpooling-mixture gives mixtures"),
    (["--bound", "multisource", "--masking", "all"],
     "--masking does not apply to --bound multisource"),
    (["--bound", "recursive", "--masking", "iid_half"],
     "--masking does not apply to --bound recursive"),
    (["--bound", "multisource", "--iwae"], "--iwae does not apply to --bound multisource"),
    (["--bound", "recursive", "--beta-norm", "0.1", "--beta", "2"],
     "--beta-norm sets beta per subset.*drop --beta"),
    (["--bound", "recursive", "--beta-norm", "0.1", "--beta-warmup", "5"],
     "--beta-norm .* --beta-warmup"),
    (["--bound", "jmvae", "--beta-norm", "0.1", "--iwae"], "--beta-norm .* --iwae"),
    (["--bound", "multisource", "--objective", "sum"], "argument --objective: invalid choice"),
    (["--bound", "recursive", "--alpha", "-1"], "argument --alpha: must be a finite number"),
    (["--bound", "recursive", "--beta-norm", "0"], "argument --beta-norm: must be a positive"),
    (["--aggregator", "subset"], "argument --aggregator: invalid choice"),
])
def test_nonsensical_combinations_are_errors_naming_the_option(argv, message, capsys,
                                                               monkeypatch):
    def no_data(args):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(DATASETS["linear-gaussian"], "load", no_data)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *SMALL, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err, err
    assert re.search(message, err), err


def test_too_many_modalities_for_subset_encoders_is_an_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *SMALL, "--num-modalities", "11", "--aggregator", "subset-encoders"])
    assert info.value.code == 2
    assert "--aggregator subset-encoders builds 2^M - 1 networks: 2047" in \
        capsys.readouterr().err


@pytest.mark.parametrize("config,message", [
    (dict(bound="multisource", objective="sum"), "--objective must be one of"),
    (dict(bound="recursive", alpha=-0.5), "--alpha must be a finite number >= 0"),
    (dict(bound="multisource", num_particles=0), "--num-particles must be a positive integer"),
    (dict(bound="elbo"), "--bound must be one of"),
])
def test_edited_configurations_are_checked_too(config, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**config).resolve()
    with pytest.raises(ValueError, match=message):  # a namespace of the fields, as older callers
        bound_options(argparse.Namespace(**config))


def test_component_counts_are_two_options_each_building_what_it_names():
    """--prior-components sets the Gaussian-mixture prior's clusters, --mixture-components the
    mixture aggregator's components; each is an error where it does not apply, and a
    configuration saved with the old --num-components builds both from it."""
    from pyro_mmvae.registry import build_prior, make_aggregator

    def config(**kw):
        return RunConfig(**{"aggregator": "poe", "latent_dim": 2, **kw})

    both = config(prior="gmm", prior_components=3, aggregator="sumpooling-mixture",
                  mixture_components=5)
    assert build_prior(both).num_components == 3
    assert make_aggregator(both, 4, 2).num_components == 5
    defaults = config(prior="gmm", aggregator="selfattention-mixture").resolve()
    assert (defaults.prior_components, defaults.mixture_components) == (10, 10)
    plain = config().resolve()
    assert (plain.prior_components, plain.mixture_components) == (None, None)
    with pytest.raises(ValueError, match="--prior-components applies to --prior gmm only"):
        config(prior_components=3).resolve()
    with pytest.raises(ValueError, match="--mixture-components applies to --aggregator"):
        config(mixture_components=3, aggregator="sumpooling").resolve()
    old = RunConfig.from_saved(dict(dataset="polydigits", prior="gmm",
                                    aggregator="sumpooling-mixture", latent_dim=2,
                                    aggregator_width=8, num_components=4)).config
    assert build_prior(old).num_components == 4
    assert make_aggregator(old, 4, 2).num_components == 4
    assert (old.prior_components, old.mixture_components) == (4, 4)


def test_component_options_reach_the_command_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--dataset", "linear-gaussian", "--prior-components", "3"])
    assert info.value.code == 2
    assert "--prior-components applies to --prior gmm only" in capsys.readouterr().err
