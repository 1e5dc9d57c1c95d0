r"""One run of the image/text experiments (``polydigits.py``, ``digits_svhn_text.py``), in a
worker process: train a :class:`~pyro_mmvae.config.RunConfig` with
:func:`pyro_mmvae.train.fit` and evaluate it with :mod:`pyro_mmvae.eval` (log-likelihoods,
coherence, latent classification), with the per-modality classifiers trained once per output
directory and shared by all runs (:func:`ensure_classifiers`). The driver is
:mod:`_multimodal_common`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.config import RunConfig
from pyro_mmvae.eval import (classifier_accuracy, conditional_coherence, joint_coherence,
                             latent_classification, load_classifiers, log_likelihood,
                             save_classifiers, train_modality_classifiers)
from pyro_mmvae.eval.coherence import subset_name
from pyro_mmvae.report import CLASSIFIERS  # the file `pyro-mmvae evaluate` reads
from pyro_mmvae.runs import build_guide, build_loss, build_model, load_data, saved_config
from pyro_mmvae.train import TrainingDiverged, fit, resolve_device, write_json

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
    def threadpool_limits(limits=None):
        return contextlib.nullcontext()

CLASSIFIERS_INFO = "classifiers.json"


# --------------------------------------------------------------------------------------------
# Classifiers: trained once per output directory


def classifier_settings(config: RunConfig, epochs: int) -> dict:
    """What the shared classifiers depend on (a cached file is reused only if these match)."""
    return {"dataset": config.dataset, "data_seed": config.data_seed,
            "image_size": config.image_size, "train_points": config.train_points,
            "classifier_epochs": epochs, "seed": 0, "pyro_mmvae_version": __version__}


def ensure_classifiers(out: Path, config: RunConfig, log=print) -> dict:
    """Train the per-modality classifiers on the training split once and cache them in
    ``out`` (``classifiers.pt``, ``classifiers.json`` with the settings and their test
    accuracies on the evaluation points); returns that info dict."""
    config = config.resolve()
    epochs, n = config.classifier_epochs, config.eval_points
    settings = classifier_settings(config, epochs)
    path, info_path = out / CLASSIFIERS, out / CLASSIFIERS_INFO
    data = load_data(config)
    device = resolve_device(config.device)
    test = {m: x[:n].to(device) for m, x in data.test.items()}
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if path.is_file() and info.get("settings") == settings:
        log(f"reusing the classifiers in {path}")
        if info.get("num_eval_points") == len(data.test_labels[:n]):
            return info
        classifiers = load_classifiers(path, device=device)
    else:
        log(f"training one classifier per modality ({data.num_train} points, "
            f"{epochs} epochs)")
        start = time.perf_counter()
        with torch.enable_grad():
            classifiers = train_modality_classifiers(
                {m: x.to(device) for m, x in data.train.items()},
                data.train_labels.to(device), data.num_classes, epochs=epochs, seed=0,
                device=device)
        save_classifiers(path, classifiers)
        info = {"settings": settings, "train_seconds": time.perf_counter() - start}
    info["test_accuracy"] = classifier_accuracy(classifiers, test,
                                                data.test_labels[:n].to(device))
    info["num_eval_points"] = len(data.test_labels[:n])
    write_json(info_path, info)
    log("classifier test accuracy: " + ", ".join(
        f"{m} {a:.3f}" for m, a in info["test_accuracy"].items()))
    return info


# --------------------------------------------------------------------------------------------
# One run (in a worker process)


def run_name(spec: dict) -> str:
    return f"{spec['aggregator']}-{spec['bound']}-seed{spec['seed']}"


def run_one(spec: dict) -> dict:
    """Train and evaluate one configuration; a JSON-ready record."""
    with threadpool_limits(limits=spec["threads"]):
        torch.set_num_threads(spec["threads"])
        return _run_one(spec)


def _run_one(spec: dict) -> dict:
    config = RunConfig.from_dict(spec["config"]).resolve()
    data = load_data(config)
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)  # parameter initialisation, as pyro-mmvae train
    model = build_model(config, data).to(data.dtype)
    guide = build_guide(config, data).to(data.dtype)
    loss = build_loss(config, data)
    record = {"name": run_name(spec), "aggregator": config.aggregator, "bound": config.bound,
              "seed": config.seed, "config": config.saved(), "eval": spec["eval"],
              "mixture_form": getattr(loss, "form", None), "masking": loss.masking_name,
              "epochs": config.epochs, "batch_size": config.batch_size,
              "num_train": data.num_train, "steps_per_epoch": data.num_train // config.batch_size,
              "num_parameters": sum(p.numel() for p in
                                    list(model.parameters()) + list(guide.parameters()))}
    run_dir = Path(spec["run_dir"]) if spec.get("run_dir") else None
    start = time.perf_counter()
    try:
        history = fit(model, guide, loss, data.train, epochs=config.epochs,
                      batch_size=config.batch_size, lr=config.lr, clip_norm=config.clip_norm,
                      run_dir=run_dir, seed=config.seed, device=device,
                      progress=spec.get("progress", False),
                      config=saved_config(config, data) if run_dir else None)
    except TrainingDiverged as err:
        record.update(status="diverged", error=str(err), train_seconds=time.perf_counter() - start,
                      loss_curve=err.history["loss"])
        return record
    if run_dir is not None:  # `pyro-mmvae evaluate RUN_DIR` then uses the shared classifiers
        shutil.copyfile(spec["classifiers"], run_dir / CLASSIFIERS)
    record.update(status="completed", train_seconds=time.perf_counter() - start,
                  epoch_seconds=history["epoch_time"], loss_curve=history["loss"],
                  final_loss_per_point=history["loss"][-1])
    start = time.perf_counter()
    model.eval()
    guide.eval()
    record.update(evaluate(spec, config, data, model, guide, device))
    record["eval_seconds"] = time.perf_counter() - start
    return record


@torch.no_grad()
def evaluate(spec: dict, config: RunConfig, data, model, guide, device) -> dict:
    """Log-likelihoods, coherence and latent classification of a trained run."""
    settings = spec["eval"]
    n, k = settings["eval_points"], settings["is_samples"]
    test = {m: x[:n].to(device) for m, x in data.test.items()}
    labels = data.test_labels[:n].to(device)
    modalities = list(test)
    out = {"num_eval_points": len(labels), "is_num_samples": k}

    joint = log_likelihood(model, guide, test, num_samples=k)
    out["test_log_likelihood"] = joint.nanmean().item()  # NaN: nothing to score
    marginals, conditionals = {}, {}
    for subset in spec["llh_subsets"]:
        members = subset.split("+")
        logp = log_likelihood(model, guide, test, targets=members, num_samples=k)
        marginals[subset] = logp.nanmean().item()
        rest = subset_name(m for m in modalities if m not in members)
        if rest:  # log p(x_rest | x_S) = log p(x) - log p(x_S)
            conditionals[f"{rest}|{subset}"] = (joint - logp).nanmean().item()
    out["test_marginal_log_likelihood"] = marginals
    out["test_conditional_log_likelihood"] = conditionals

    classifiers = load_classifiers(spec["classifiers"], device=device)
    coherence = conditional_coherence(model, guide, test, labels, classifiers)
    out["coherence"] = {k: coherence[k] for k in (
        "coherence", "cross", "self", "cross_by_num_inputs", "self_by_num_inputs",
        "leave_one_out", "leave_one_out_mean")}
    out["joint_coherence"] = joint_coherence(model, classifiers,
                                             num_samples=settings["joint_samples"])
    train = {m: x.to(device) for m, x in data.train.items()}
    latent = latent_classification(guide, train, data.train_labels.to(device), test, labels,
                                   num_train=settings["latent_train_points"], seed=config.seed)
    out["latent_classification"] = {key: latent[key] for key in ("accuracy", "by_num_inputs")}
    out["latent_train_points"] = min(settings["latent_train_points"], data.num_train)
    return out
