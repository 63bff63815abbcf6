"""--phases: what trains, with which optimizer and lr, in each part of a run; and the epochs of each
part's multistep schedule."""

import argparse
import dataclasses
import math

from bnonly.choices import PHASE_MODES, PHASE_OPTIMIZERS, default_lr


def phase_list(text) -> list:
    """Parse 'bn:5,all:155' or 'bn:3:ngd:1.6,all:27:sgd' (or a config file's list of such items or of
    [mode, epochs(, optimizer(, lr))] lists) into [[mode, epochs(, optimizer(, lr))], ...]."""
    items = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    phases = []
    for item in items:
        parts = item.split(":") if isinstance(item, str) else list(item)
        try:
            mode, epochs = str(parts[0]), parts[1]
            if isinstance(epochs, str) and epochs.isdigit():
                epochs = int(epochs)
            if not 2 <= len(parts) <= 4 or mode not in PHASE_MODES or type(epochs) is not int or epochs < 1:
                raise ValueError
            own = [str(parts[2])] if len(parts) > 2 else []  # the phase's optimizer, then its lr
            if own and own[0] not in PHASE_OPTIMIZERS:
                raise ValueError
            if len(parts) == 4:
                own.append(float(parts[3]))
                if not (math.isfinite(own[1]) and own[1] > 0):
                    raise ValueError
        except (ValueError, IndexError, TypeError):
            raise argparse.ArgumentTypeError(
                f"expected MODE:EPOCHS[:OPTIMIZER[:LR]],... with MODE one of {'/'.join(PHASE_MODES)}, EPOCHS >= 1, "
                f"OPTIMIZER one of {'/'.join(PHASE_OPTIMIZERS)} and LR above 0, e.g. bn:5,all:155 or "
                f"bn:3:ngd:1.6,all:27:sgd:0.1; got {text!r}") from None
        phases.append([mode, epochs, *own])
    if not phases:
        raise argparse.ArgumentTypeError(f"expected at least one MODE:EPOCHS phase, got {text!r}")
    return phases


def phase_settings(cfg, index: int):
    """The settings that phase `index` of --phases trains with: `cfg` itself, or a copy with the phase's
    own optimizer and lr where it names them (an optimizer other than --optimizer, named without an lr,
    takes that optimizer's default lr)."""
    phase = cfg.phases[index] if cfg.phases else ()
    if len(phase) < 3:
        return cfg
    optimizer = phase[2]
    lr = phase[3] if len(phase) > 3 else cfg.lr if optimizer == cfg.optimizer else default_lr(optimizer, cfg.ngd_power)
    return dataclasses.replace(cfg, optimizer=optimizer, lr=lr, use_lbfgs=False)


def run_optimizers(cfg) -> set:
    """Every optimizer the run trains with: --optimizer's, or those of its --phases."""
    if not cfg.phases:
        return {cfg.optimizer}
    return {phase_settings(cfg, index).optimizer for index in range(len(cfg.phases))}


def default_milestones(epochs: int) -> list:
    """50 % and 75 % of the epochs (the classic 80,120 of 160), without 0 or repeats."""
    return sorted({m for m in (int(epochs * 0.5), int(epochs * 0.75)) if m >= 1})


def phase_at(cfg, epoch: int) -> tuple:
    """(index, mode, epochs) of the phase that 1-based `epoch` belongs to; a run without --phases is one
    phase of its -t mode (epochs past the end count to the last phase)."""
    phases = cfg.phases or [[cfg.trainable, cfg.epochs]]
    end = 0
    for index, (mode, epochs, *_) in enumerate(phases):
        end += epochs
        if epoch <= end or index == len(phases) - 1:
            return index, mode, epochs
