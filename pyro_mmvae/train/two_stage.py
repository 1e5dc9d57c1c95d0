"""Two-stage training with :func:`~pyro_mmvae.train.fit`: the tVAE of Vedantam et al. (2018)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import torch

from .checkpoints import PathLike
from .loop import fit


def fit_two_stage(model, guide, train_data: Mapping[str, torch.Tensor], *,
                  epochs: Tuple[int, int], batch_size: int, losses: Optional[Sequence] = None,
                  beta: float = 1.0, frozen: Iterable = (), run_dir: Optional[PathLike] = None,
                  **kwargs) -> Tuple[dict, dict]:
    r"""Train in two stages with :func:`fit`, the model frozen in the second: the tVAE.

    The triplet-ELBO VAE of Vedantam, Fischer, Huang and Murphy (*Generative Models of
    Visually Grounded Imagination*, ICLR 2018, arXiv:1705.10762) as the M2VAE paper (ICLR 2019
    submission, §5) trains its baseline:

    1. **Joint stage** (``epochs[0]`` epochs of ``losses[0]``; default
       ``JointMultimodalELBO(alpha=0, beta=beta)``): the joint encoder and the decoders by the
       joint ELBO of the observed set :math:`O` (M2VAE eq. 2),

       .. math:: \mathcal L_J = \mathbb E_{q(z\mid x_O)}\sum_{m\in O}\log p(x_m\mid z)
           - \beta\,\mathrm{KL}\big(q(z\mid x_O)\,\|\,p(z)\big).

    2. **Unimodal stage** (``epochs[1]`` epochs of ``losses[1]``; default
       ``RecursiveMultimodalELBO(alpha=0, beta=beta, subsets="unimodal")``): every parameter
       of ``model`` (decoders, a learnable prior) and of ``frozen`` held fixed, the unimodal
       encoders trained by their own ELBOs, each reconstructing its own modality only,

       .. math:: \sum_{m\in O}\mathbb E_{q(z\mid x_m)}\log p(x_m\mid z)
           - \beta\,\mathrm{KL}\big(q(z\mid x_m)\,\|\,p(z)\big).

    With :class:`~pyro_mmvae.guides.SubsetEncoders` one guide serves both stages: its full-set
    network is the joint encoder, its singleton networks the unimodal ones. The joint stage
    gives the singletons no gradient and the unimodal stage none to the full set, and each
    :func:`fit` builds a fresh Adam, so each stage moves only its own networks (shared
    modality feature encoders, e.g. MLP ``encoders`` of the guide, would move in both: pass
    them in ``frozen`` to keep the joint encoder fixed in stage 2).

    Freezing is ``requires_grad=False`` on those parameters for the second :func:`fit` (which
    keeps such parameters fixed; see the module docstring); the previous flags are restored
    afterwards.

    :param model, guide: as for :func:`fit`.
    :param train_data: ``{modality: (N, ...)}``, fully observed for the tVAE. With a
        ``mask=`` (in ``kwargs``) the joint stage trains each point's observed set's network
        (for a point observing one modality, that singleton's), so the singletons then move
        in both stages.
    :param epochs: ``(joint epochs, unimodal epochs)``; 0 skips a stage.
    :param batch_size: as for :func:`fit`, both stages.
    :param losses: ``(stage-1 loss, stage-2 loss)``, any bounds (default above).
    :param beta: the rates' weight of the default losses (not with ``losses``).
    :param frozen: further modules or parameters to hold fixed in stage 2.
    :param run_dir: each stage's files go to ``run_dir/stage1`` and ``run_dir/stage2``.
    :param kwargs: the other arguments of :func:`fit` (``mask``, ``lr``, ``seed``, ``device``,
        ``progress``, ``eval_fn``, ...), the same for both stages; ``resume_from`` is not
        supported (call :func:`fit` per stage for that).
    :returns: ``(history of stage 1, history of stage 2)``, each as :func:`fit` returns it.
    """
    if "resume_from" in kwargs:
        raise TypeError("fit_two_stage takes no 'resume_from'; resume a stage with fit()")
    if (not isinstance(epochs, (tuple, list)) or len(epochs) != 2
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs)):
        raise ValueError(f"epochs must be a pair of integers >= 0 (joint stage, unimodal "
                         f"stage), got {epochs!r}")
    if losses is None:
        from pyro_mmvae.infer.recursive_elbo import JointMultimodalELBO, RecursiveMultimodalELBO

        losses = (JointMultimodalELBO(alpha=0.0, beta=beta),
                  RecursiveMultimodalELBO(alpha=0.0, beta=beta, subsets="unimodal"))
    elif beta != 1.0:
        raise ValueError("beta sets the default losses; with losses= give beta to them")
    if len(losses) != 2:
        raise ValueError(f"losses must be a pair (stage 1, stage 2), got {len(losses)}")
    held = list(model.parameters())
    for item in frozen:
        held.extend(item.parameters() if isinstance(item, torch.nn.Module) else [item])
    if not all(isinstance(p, torch.Tensor) for p in held):
        raise TypeError("frozen must hold nn.Modules or parameters (tensors)")

    def stage_dir(k):
        return None if run_dir is None else Path(run_dir) / f"stage{k}"

    first = fit(model, guide, losses[0], train_data, epochs=epochs[0], batch_size=batch_size,
                run_dir=stage_dir(1), **kwargs)
    flags = [p.requires_grad for p in held]
    try:
        for p in held:
            p.requires_grad_(False)
        second = fit(model, guide, losses[1], train_data, epochs=epochs[1],
                     batch_size=batch_size, run_dir=stage_dir(2), **kwargs)
    finally:
        for p, flag in zip(held, flags):
            p.requires_grad_(flag)
    return first, second
