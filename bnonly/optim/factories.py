"""The optimizer and learning-rate schedule factories: torch.optim's optimizers and this project's
stochastic L-BFGS over the trainable parameters, and the per-epoch schedule (warm-up, then multistep,
cosine or constant)."""

import math

import torch

from bnonly.choices import ADAM_FAMILY
from bnonly.distributed import World
from bnonly.models.freezing import is_batchnorm
from bnonly.optim.natural_gradient import NaturalGradient
from bnonly.optim.quasi_newton import StochasticLBFGS
from bnonly.phases import default_milestones


def build_optimizer(cfg, params: list, no_decay=(), model=None, world: World = World()):
    """torch.optim optimizer over the trainable parameters; None when nothing trains.

    Parameters in `no_decay` (e.g. BatchNorm's with --bn-weight-decay false) get no weight decay; for
    L-BFGS, whose decay is an L2 term in the loss (lbfgs_step), the caller leaves them out of that term.
    ngd needs the `model` (it hooks its BatchNorm layers) and the `world` (it averages the Fisher).
    """
    if not params:
        return None
    if cfg.optimizer == "lbfgs" and cfg.lbfgs_variant != "torch":
        pairs = {"batch": "same-batch", "multibatch": "overlap", "hvp": "hvp"}[cfg.lbfgs_variant]
        return StochasticLBFGS(params, lr=cfg.lr, history_size=cfg.lbfgs_history, pairs=pairs,
                               max_iter=cfg.lbfgs_max_iter, line_search=cfg.lbfgs_line_search,
                               damping=cfg.lbfgs_damping, momentum=cfg.lbfgs_momentum,
                               variance_scaling=cfg.lbfgs_variance_scaling)
    if cfg.optimizer == "lbfgs":  # one parameter group: LBFGS allows no more
        return torch.optim.LBFGS(params, lr=cfg.lr, max_iter=cfg.lbfgs_max_iter, max_eval=cfg.lbfgs_max_eval,
                                 history_size=cfg.lbfgs_history,
                                 line_search_fn=None if cfg.lbfgs_line_search == "none" else cfg.lbfgs_line_search)
    decayed, undecayed = split_decay(params, no_decay)
    groups = [g for g in ({"params": decayed}, {"params": undecayed, "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "ngd":
        trained = {id(p) for p in params}
        modules = [m for m in model.modules() if is_batchnorm(m) and m.weight is not None and id(m.weight) in trained]
        return NaturalGradient(groups, modules, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               damping=cfg.ngd_damping, ema=cfg.ngd_ema, refresh=cfg.ngd_refresh,
                               power=cfg.ngd_power, blocks=cfg.ngd_blocks, world=world)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    adaptive = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
                "adagrad": torch.optim.Adagrad, "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam}
    if cfg.optimizer not in adaptive:
        raise ValueError(f"unknown optimizer: {cfg.optimizer}")
    options = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}  # AdamW decouples it; the others add it to the gradient
    if cfg.eps is not None:
        options["eps"] = cfg.eps
    if cfg.betas is not None and cfg.optimizer in ADAM_FAMILY:  # not for a --phases phase of rmsprop, say
        options["betas"] = tuple(cfg.betas)
    return adaptive[cfg.optimizer](groups, **options)


def split_decay(params: list, no_decay) -> tuple:
    """(the parameters weight decay applies to, those in `no_decay`), each in the order of `params`."""
    skip = {id(p) for p in no_decay}
    return [p for p in params if id(p) not in skip], [p for p in params if id(p) in skip]


def lr_factor(epoch: int, epochs: int, schedule: str, milestones, warmup: int = 0) -> float:
    """The learning rate of 0-based `epoch` of `epochs`, as a fraction of --lr.

    Warmup rises linearly, 1/(W+1), 2/(W+1), ..., over the first W epochs; then multistep multiplies by
    0.1 at each milestone reached (absolute epochs, as MultiStepLR), cosine falls from 1 towards 0 over
    the epochs after the warmup (as CosineAnnealingLR), constant stays at 1.
    """
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "multistep":
        return 0.1 ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(epochs - warmup, 1)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule: {schedule}")


def build_scheduler(cfg, optimizer, epochs=None):
    """Per-epoch learning-rate schedule over `epochs` (default: the run's; a phase passes its own length);
    None when there is no optimizer."""
    if optimizer is None:
        return None
    epochs = epochs or cfg.epochs
    milestones = cfg.milestones if cfg.milestones is not None else default_milestones(epochs)
    lr_factor(0, epochs, cfg.schedule, milestones, cfg.warmup_epochs)  # an unknown schedule fails here
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, epochs, cfg.schedule, milestones, cfg.warmup_epochs))
