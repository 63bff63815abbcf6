"""Continuing a run from its checkpoint: the settings it resumes with, and its states loaded back.

A resumed run keeps what it is (architecture, data, optimizer, schedule ...) and may change only how it
runs (RUNTIME_SETTINGS); the model, optimizer, schedule, loss scaler and random generator continue from
the saved states, so on the CPU the result equals the uninterrupted run.
"""

import os

from bnonly.config import FIELDS, RUNTIME_SETTINGS, Config, ConfigError, resolve
from bnonly.runs.runfiles import CheckpointError, checkpoint_path, set_rng_state


def resume_config(checkpoint: dict, cli: Config, given: set) -> Config:
    """The checkpoint's settings, with the flags given now on top; a change of what the run is, is an error."""
    saved = {k: v for k, v in checkpoint["config"].items() if k in FIELDS}
    saved.setdefault("lbfgs_variant", "torch")  # a checkpoint from before the variants ran torch's L-BFGS
    values = {**saved, **{name: getattr(cli, name) for name in given}}
    if "use_lbfgs" in given and "optimizer" not in given:
        values["optimizer"] = "lbfgs" if cli.use_lbfgs else "sgd"
    if "half" in given and "precision" not in given:
        values["precision"] = "fp16"
    values["use_lbfgs"] = values["half"] = None  # resolve() sets them from the optimizer and the precision
    merged = resolve(Config(**values), given)
    evaluation_only = ("bn_adapt",) if merged.evaluate else ()  # -e may add the adapted evaluation
    for name in saved:
        if name not in RUNTIME_SETTINGS + evaluation_only and getattr(merged, name) != saved[name]:
            flag = {"use_lbfgs": "--optimizer", "half": "--precision"}.get(name, f"--{name.replace('_', '-')}")
            raise ConfigError(f"{flag} {getattr(merged, name)} conflicts with the checkpoint's {saved[name]}; "
                              f"drop the flag to resume, or start a new run with another --save-dir")
    if merged.schedule == "cosine" and merged.epochs != saved["epochs"]:
        raise ConfigError("--epochs cannot change the length of a cosine schedule on --resume; start a new run")
    return merged


def resuming_in_place(cfg: Config, checkpoint) -> bool:
    """True when the run folder is the resumed checkpoint's own folder (its files may be replaced)."""
    return checkpoint is not None and os.path.realpath(cfg.save_dir) == os.path.realpath(
        os.path.dirname(checkpoint_path(cfg.resume)))


def restore(checkpoint: dict, model, optimizer, scheduler, scaler, generator) -> dict:
    """Load a checkpoint's states into the freshly built objects; returns its normalisation."""
    try:
        model.load_state_dict(checkpoint["model"])
        if optimizer is not None and checkpoint.get("optimizer"):
            optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler.load_state_dict(scheduler_state(checkpoint["scheduler"]))
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if generator is not None:  # None: only evaluating, no random numbers needed
            set_rng_state(checkpoint["rng"], generator)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"--resume: the checkpoint does not match this model or run "
                              f"({str(e).splitlines()[0][:120]}); resume with the settings it was made with") from None
    return checkpoint["normalization"]


def scheduler_state(state: dict) -> dict:
    """A saved schedule state as the LambdaLR of build_scheduler loads it. Checkpoints written before the
    schedules became one LambdaLR hold a MultiStepLR or CosineAnnealingLR state: only the position counts."""
    if "lr_lambdas" in state:
        return state
    keep = ("base_lrs", "last_epoch", "_step_count", "_last_lr", "verbose", "_get_lr_called_within_step")
    return {**{k: state[k] for k in keep if k in state}, "lr_lambdas": [None] * len(state["base_lrs"])}
