r"""Everything ``pyro-mmvae evaluate RUN_DIR`` measures and draws for a trained run.

For labelled image/text datasets (PolyDigits, DigitsSVHNText) :func:`evaluate_run` writes to the
run directory

- ``classifiers.pt``: one classifier per modality, trained on the run's training split (kept
  with the run, so every later evaluation uses the same ones) — their test accuracies are the
  ceiling of every coherence number;
- ``evaluation.json``: the importance-sampled joint log-likelihood of the test points and the
  leave-one-out conditionals :math:`\log p(x_m\mid x_{\mathcal M\setminus m})`; rates and
  distortions (full, one subset per point from the bound's masking distribution, and the cross
  terms); conditional coherence for every subset of inputs (self and cross, by number of
  inputs, leave-one-out), joint (unconditional) coherence; linear latent classification from
  every subset;
- ``rate_distortion.png``: rate against distortion per modality for the full posterior and
  for q(z | x_S) by number of inputs :math:`|S|` (the distortion of the modalities it did not see:
  the cross distortion of Hirt et al.), from ``rate_distortion_by_subset_size`` in evaluation.json;
- ``coherence.png`` (coherence and latent accuracy vs number of inputs, MoPoE's PolyMNIST
  figure), ``generation_all.png`` (reconstructions), ``generation_<m>.png`` (cross-generation
  from each single modality), ``samples.png`` (unconditional samples).

For the linear-Gaussian dataset it reports exact, PCA-optimal and importance-sampled
log-likelihoods and the relative LLH gap (Hirt et al., arXiv:2309.00380, §5.1).

Log-likelihoods and rates are means per data point in nats (over the points that have
something to score: :func:`~pyro_mmvae.eval.log_likelihood` is NaN for the others).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

import pyro
import torch

from pyro_mmvae.models import pca_maximum_likelihood, relative_llh_gap
from pyro_mmvae.models.linear_gaussian import gaussian_log_likelihood
from pyro_mmvae.diagnostics.plots import (plot_coherence, plot_rate_distortion,
                                          save_generation_grid, save_samples_grid)
from pyro_mmvae.eval import log_likelihood, log_marginal, rate_distortion
from pyro_mmvae.eval.classifiers import (classifier_accuracy, load_classifiers,
                                         save_classifiers, train_modality_classifiers)
from pyro_mmvae.eval.coherence import (conditional_coherence, joint_coherence,
                                       latent_classification)
from pyro_mmvae.config import RunConfig
from pyro_mmvae.train import CHECKPOINT, CONFIG, LOSS_CURVE, METRICS, write_json
from pyro_mmvae.train.distributed import all_reduce_sum, gather_rows, local_shard

CLASSIFIERS = "classifiers.pt"
EVALUATION = "evaluation.json"


@torch.no_grad()
def evaluate_linear_gaussian(config: RunConfig, data, model, guide,
                             place=None) -> Dict[str, float]:
    """Exact and IS log-likelihoods per data point, the PCA MLE and the relative LLH gap.

    Exact log-likelihoods and PCA run in float64 on copies; the IS estimate runs the trained
    model and guide as they are, on the test split, with ``config.is_samples`` samples.
    """
    device = next(model.parameters()).device
    exact = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    train64 = {m: x.to(device="cpu", dtype=torch.float64) for m, x in data.train.items()}
    test64 = {m: x.to(device="cpu", dtype=torch.float64) for m, x in data.test.items()}
    out = {"train_exact_log_likelihood": exact.exact_log_likelihood(train64).mean().item()}
    x_train = torch.cat(list(train64.values()), dim=-1)  # (N, sum D_m)
    w, b, sigma2, total = pca_maximum_likelihood(x_train, config.latent_dim)
    out["pca_mle_train_log_likelihood"] = total.item() / x_train.shape[0]
    out["relative_llh_gap"] = relative_llh_gap(out["pca_mle_train_log_likelihood"],
                                               out["train_exact_log_likelihood"])
    if data.num_test:
        out["test_exact_log_likelihood"] = exact.exact_log_likelihood(test64).mean().item()
        x_test = torch.cat(list(test64.values()), dim=-1)
        cov = w @ w.T + sigma2 * torch.eye(x_test.shape[-1], dtype=torch.float64)
        out["pca_mle_test_log_likelihood"] = gaussian_log_likelihood(x_test, b, cov).mean().item()
        test = {m: x.to(device) for m, x in data.test.items()}
        out["test_is_log_likelihood"] = _rows(place)(
            lambda d, m: log_likelihood(model, guide, d, m, num_samples=config.is_samples),
            test, None).nanmean().item()
        out["is_num_samples"] = config.is_samples
    return out


def get_classifiers(run_dir: Path, data, device, seed: int = 0, epochs: int = 5,
                    progress: bool = False):
    """The run's classifiers: loaded from ``classifiers.pt``, or trained on the training split
    and saved there."""
    path = run_dir / CLASSIFIERS
    if path.is_file():
        return load_classifiers(path, device=device)
    train = {m: x.to(device) for m, x in data.train.items()}
    with torch.enable_grad():
        classifiers = train_modality_classifiers(train, data.train_labels.to(device),
                                                 data.num_classes, epochs=epochs, seed=seed,
                                                 device=device, progress=progress)
    save_classifiers(path, classifiers)
    return classifiers


def rate_distortion_by_subset_size(rd: Mapping[str, torch.Tensor],
                                   num_modalities: int) -> Dict[int, Dict[str, float]]:
    r"""Means of the per-point terms of :func:`~pyro_mmvae.eval.rate_distortion` grouped by the
    size :math:`k=|S|` of each point's subset, for :math:`0<k<M`: ``{k: {"rate": R_S,
    "cross_rate": ..., "cross_distortion": -E_{q(z|x_S)} log p(x_{O\S}|z) / (M-k),
    "conditional_distortion": ... / (M-k), "num_points": n}}`` — distortions per target
    modality, so that sizes compare."""
    sizes = rd["subset_size"]
    out = {}
    for k in range(1, num_modalities):
        at = sizes == k
        if at.any():
            targets = num_modalities - k
            out[k] = {"rate": rd["rate"][at].float().mean().item(),
                      "cross_rate": rd["cross_rate"][at].float().mean().item(),
                      "cross_distortion": -rd["cross_reconstruction"][at].float().mean().item()
                      / targets,
                      "conditional_distortion":
                          -rd["conditional_reconstruction"][at].float().mean().item() / targets,
                      "num_points": int(at.sum())}
    return out


def rate_distortion_points(means: Mapping[str, float], by_size: Mapping[int, Mapping[str, float]],
                           num_modalities: int) -> Dict[str, tuple]:
    """``{label: (rate, distortion per modality)}`` for :func:`plot_rate_distortion`: the full
    posterior (rate KL(q(z|x)||p(z)), distortion of all ``M`` modalities) and, per subset size
    ``k``, q(z|x_S) with the distortion of the ``M - k`` modalities it did not see."""
    points = {"all inputs: −log p(x|z) / M": (means["full_rate"],
                                              -means["full_reconstruction"] / num_modalities)}
    for k, v in by_size.items():
        points[f"{k} input{'s' if int(k) > 1 else ''}: cross"] = (v["rate"],
                                                                  v["cross_distortion"])
    return points


def _sub(tensors: Mapping[str, torch.Tensor], n: Optional[int], device):
    return {m: (x if n is None else x[:n]).to(device) for m, x in tensors.items()}


@torch.no_grad()
def evaluate_labelled(config: RunConfig, data, model, guide, run_dir: Path, device,
                      progress: bool = False, log=print, place=None) -> Optional[dict]:
    """All metrics and pictures of a labelled image/text run (module docstring). In a
    data-parallel run (``place``) every process computes its shards of the log-likelihoods
    and of the conditional coherence; the others return None, the main process the rest."""
    main_process = place is None or place.is_main
    n = config.eval_points
    test = _sub(data.test, n, device)
    labels = data.test_labels[:n].to(device) if n else data.test_labels.to(device)
    out: Dict[str, object] = {"num_eval_points": len(labels), "is_num_samples": config.is_samples}
    t0 = time.perf_counter()

    if main_process:
        log(f"evaluating on {len(labels)} test points: log-likelihoods "
            f"(K={config.is_samples})")
    modalities = list(test)
    observed = {m: torch.ones(len(labels), dtype=torch.bool, device=device) for m in modalities}
    rows = _rows(place)

    def marginal(mask):
        return rows(lambda d, m: log_marginal(model, guide, d, m, config.is_samples), test,
                    mask)
    joint = marginal(observed)
    out["test_log_likelihood"] = joint.mean().item()  # every test point fully observed
    if len(modalities) > 1:  # log p(x_m | x_rest) = log p(x) - log p(x_rest): one joint for all
        out["test_leave_one_out_log_likelihood"] = {
            m: (joint - marginal(observed | {m: ~observed[m]})).mean().item()
            for m in modalities}
    if main_process:
        rd = rate_distortion(model, guide, test, masking=config.masking or "iid_half")
        out["rate_distortion"] = {k: v.float().mean().item() for k, v in rd.items()
                                  if k != "subset_size"}
        out["rate_distortion_by_subset_size"] = rate_distortion_by_subset_size(
            rd, len(modalities))
        log("per-modality classifiers")
        classifiers = get_classifiers(run_dir, data, device, seed=config.seed,
                                      epochs=config.classifier_epochs, progress=progress)
        out["classifier_test_accuracy"] = classifier_accuracy(classifiers, test, labels)
        log("coherence and latent classification for every subset of inputs")
    if place is not None:  # rank 0's classifiers and random state, for every process
        sent = [None]
        if main_process:
            cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
            sent = [({m: copy.deepcopy(c).cpu() for m, c in classifiers.items()},
                     pyro.util.get_rng_state(), cuda)]
        torch.distributed.broadcast_object_list(sent, src=0)
        if not main_process:
            shared, state, cuda = sent[0]
            classifiers = {m: c.to(device) for m, c in shared.items()}
            pyro.util.set_rng_state(state)  # the draws of a one-process evaluation
            if cuda is not None and device.type == "cuda":
                torch.cuda.set_rng_state(cuda, device)
    if place is None:
        coherence = conditional_coherence(model, guide, test, labels, classifiers)
    else:  # each process its shard of the points, the counts summed
        with local_shard(test, None, place) as (x, _, shard):
            coherence = conditional_coherence(model, guide, x, labels[shard], classifiers,
                                              reduce=all_reduce_sum)
    if not main_process:
        return None
    out["conditional_coherence"] = coherence
    out["joint_coherence"] = joint_coherence(model, classifiers, num_samples=1000,
                                             modalities=modalities)
    train = _sub(data.train, n and 4 * n, device)
    train_labels = data.train_labels[:n and 4 * n].to(device) if n else \
        data.train_labels.to(device)
    out["latent_classification"] = latent_classification(guide, train, train_labels, test,
                                                         labels, seed=config.seed)

    coh = out["conditional_coherence"]
    plot_coherence(run_dir / "coherence.png", {
        "cross coherence": coh["cross_by_num_inputs"],
        "self coherence": coh["self_by_num_inputs"],
        "latent classification": out["latent_classification"]["by_num_inputs"]},
        title=f"{config.dataset}: {config.aggregator}, {config.bound} bound")
    plot_rate_distortion(run_dir / "rate_distortion.png",
                         rate_distortion_points(out["rate_distortion"],
                                                out["rate_distortion_by_subset_size"],
                                                len(modalities)),
                         ylabel="distortion per modality (nats)",
                         title=f"{config.dataset}: {config.aggregator}, {config.bound} bound")
    save_generation_grid(run_dir / "generation_all.png", model, guide, test, modalities)
    for m in modalities:
        save_generation_grid(run_dir / f"generation_{m}.png", model, guide, test, [m])
    save_samples_grid(run_dir / "samples.png", model, modalities=modalities)
    out["evaluation_time_s"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def evaluate_masked(config: RunConfig, data, model, guide, device, place=None) -> dict:
    r"""Log-likelihoods of test data with missing entries (``--data``): the joint
    :math:`\log p(x_O)` of each point's observed modalities, and for every modality ``m`` the
    conditional :math:`\log p(x_m\mid x_{O\setminus m})` over the points observing ``m`` and
    something else, means over the points that have them (with their counts)."""
    test = _sub(data.test, config.eval_points, device)
    mask = _sub(data.test_mask, config.eval_points, device)
    k = config.is_samples
    rows = _rows(place)

    def marginal(given):
        return rows(lambda d, m: log_marginal(model, guide, d, m, k), test, given)
    # log p(x_m | x_{O minus m}) = log p(x_O) - log p(x_{O minus m}): one joint for all m
    joint = marginal(mask)  # every point observes something
    out = {"num_eval_points": int(joint.shape[0]), "is_num_samples": k,
           "test_log_likelihood": joint.mean().item(),
           "test_conditional_log_likelihood": {}, "observed_fraction": {
               m: float(v.double().mean()) for m, v in mask.items()}}
    for m in (test if len(test) > 1 else ()):
        others = torch.stack([mask[o] for o in test if o != m]).any(0)
        scored = mask[m] & others
        rest = marginal({**mask, m: torch.zeros_like(mask[m])})
        value = (joint - rest)[scored]
        out["test_conditional_log_likelihood"][m] = {
            "mean": value.mean().item() if scored.any() else None,
            "num_points": int(scored.sum())}
    return out


def _by_size(curve: Mapping, size: int):
    return curve.get(size, curve.get(str(size)))


def headline(metrics: Mapping) -> Dict[str, float]:
    """The few numbers worth a line in the terminal and in ``metrics.json``."""
    out = {}
    for key in ("test_log_likelihood", "test_is_log_likelihood", "test_exact_log_likelihood",
                "relative_llh_gap", "joint_coherence"):
        if key in metrics:
            out[key] = metrics[key]
    coh = metrics.get("conditional_coherence")
    if coh:
        out["leave_one_out_coherence"] = coh["leave_one_out_mean"]
        out["cross_coherence_from_one_input"] = _by_size(coh["cross_by_num_inputs"], 1)
        latent = metrics["latent_classification"]["by_num_inputs"]
        out["latent_accuracy_one_input"] = _by_size(latent, 1)
        out["latent_accuracy_all_inputs"] = _by_size(latent, len(metrics["modalities"]))
    return out


def evaluate_run(config: RunConfig, data, model, guide, run_dir, device, progress: bool = False,
                 log=print, place=None) -> Optional[dict]:
    """Evaluate a trained run of ``config`` and write ``evaluation.json`` (and pictures) into
    ``run_dir``.

    Data-parallel (``place``, a :class:`~pyro_mmvae.train.distributed.Distributed`): every
    process calls this and estimates its shards of the importance-sampled log-likelihoods
    (:func:`~pyro_mmvae.train.distributed.gather_rows`) and of the conditional coherence
    (counts summed over the processes); the main process computes the rest and writes the
    files, the others return None."""
    config = config.resolve()
    run_dir = Path(run_dir)
    model.eval()
    guide.eval()
    if config.dataset == "linear-gaussian":
        metrics = evaluate_linear_gaussian(config, data, model, guide, place)
    elif data.test_labels is not None:
        metrics = evaluate_labelled(config, data, model, guide, run_dir, device, progress, log,
                                    place)
        if metrics is not None:
            metrics["modalities"] = list(data.test)
    elif data.test_mask is not None:  # your own data, missing entries: likelihoods
        metrics = evaluate_masked(config, data, model, guide, device, place)
    else:  # unlabelled data: likelihoods only
        test = _sub(data.test, config.eval_points, device)
        metrics = {"test_log_likelihood": _rows(place)(
            lambda d, m: log_likelihood(model, guide, d, m, num_samples=config.is_samples),
            test, None).nanmean().item()}
    if place is not None and not place.is_main:
        return None
    write_json(run_dir / EVALUATION, metrics)
    return metrics


def _rows(place):
    """``rows(fn, data, mask)``: the per-data-point ``fn(data, mask)``, gathered over the
    processes of a data-parallel run (``place``), else called as it is."""
    if place is None:
        return lambda fn, data, mask: fn(data, mask)
    return lambda fn, data, mask: gather_rows(fn, data, mask, place)


def read_evaluation(run_dir) -> dict:
    return json.loads((Path(run_dir) / EVALUATION).read_text())


def summary(metrics: Mapping, run_dir: Path, evaluated: bool = True) -> str:
    """A few lines for the terminal (log-likelihoods are means per data point, in nats);
    ``evaluated``: whether the evaluation ran (and wrote ``evaluation.json``)."""
    lines = [f"done in {metrics['wall_time_s']:.1f} s ({metrics['epochs']} epochs); "
             f"final train loss {metrics['final_train_loss']:.4f} per data point"]
    if "train_exact_log_likelihood" in metrics:
        lines.append("log-likelihood per data point (nats):")
        rows = [("exact, train", "train_exact_log_likelihood"),
                ("exact, test", "test_exact_log_likelihood"),
                ("PCA maximum likelihood, train", "pca_mle_train_log_likelihood"),
                ("PCA maximum likelihood, test", "pca_mle_test_log_likelihood"),
                (f"importance sampled (K={metrics.get('is_num_samples')}), test",
                 "test_is_log_likelihood")]
        lines += [f"  {label:<38} {metrics[key]:.4f}" for label, key in rows if key in metrics]
        lines.append(f"relative LLH gap to the PCA MLE (train): {metrics['relative_llh_gap']:.3e}")
    else:
        labels = {"test_log_likelihood": "test log-likelihood per point (IS)",
                  "leave_one_out_coherence": "leave-one-out coherence",
                  "cross_coherence_from_one_input": "cross coherence from one input",
                  "joint_coherence": "joint (unconditional) coherence",
                  "latent_accuracy_one_input": "latent linear accuracy, one input",
                  "latent_accuracy_all_inputs": "latent linear accuracy, all inputs"}
        lines += [f"  {label:<38} {metrics[key]:.4f}" for key, label in labels.items()
                  if metrics.get(key) is not None]
    if evaluated:
        pictures = any(p.name != LOSS_CURVE for p in Path(run_dir).glob("*.png"))
        lines.append(f"wrote {', '.join((CONFIG, METRICS, CHECKPOINT, LOSS_CURVE, EVALUATION))}"
                     f"{' (and pictures)' if pictures else ''} to {run_dir}")
    else:
        lines.append(f"wrote {', '.join((CONFIG, METRICS, CHECKPOINT, LOSS_CURVE))} to {run_dir} "
                     f"(not evaluated: run `pyro-mmvae evaluate {run_dir}`)")
    return "\n".join(lines)
