"""Which runs are repeats of one experiment, and what to call them.

A run is the dict run_reader.read_run returns (`name`, `config`, `history`). Runs whose settings
differ only in SEED_KEYS form a seed group; a legend label names the settings in which runs (or
groups) differ, leaving out bookkeeping and the settings that follow another's default (FOLLOWS).
Pure: no matplotlib, no torch, so plots.py and the tests use it alike.
"""

import json
import re

from bnonly.runs import analysis

# Settings that say where or how a run was executed, not what was trained.
BOOKKEEPING_KEYS = frozenset({
    "save_dir", "resume", "evaluate", "save_every", "print_freq", "no_progress", "overwrite",
    "workers", "cache_dir", "data_dir", "download", "config", "versions", "device",
    "use_lbfgs", "resolved_device", "global_batch_size",
})
# Settings in which runs may differ and still be repeats of one experiment (a seed group).
# `checkpoint_minutes` is already bookkeeping (see `settings`); named here for the reader.
SEED_KEYS = frozenset({"seed", "checkpoint_minutes"})
# Settings whose value follows another's default: runs with different optimizers have different
# default learning rates, and are still a comparison of optimizers.
# The same holds for the L-BFGS-only settings when only one of the runs uses L-BFGS.
# And --phases runs: their default milestones are per phase, `phases` shows as `trainable` (run_reader.with_defaults).
# The ngd settings act only in ngd's runs (or in a --phases run's ngd phase, so they follow `trainable` too),
# and only where a run lacks them (run_reader.with_defaults drops them from runs without ngd): two runs that
# both use ngd and differ in it show the difference. Milestones act only in a multistep schedule.
NGD_KEYS = ("ngd_fisher", "ngd_damping", "ngd_ema", "ngd_refresh", "ngd_power", "ngd_blocks")
FOLLOWS = {"optimizer": ("lr", "bn_recalibrate", "lbfgs_variant", "lbfgs_history", "lbfgs_max_iter", "lbfgs_max_eval",
                         "lbfgs_batch_size", "lbfgs_chunk_size", "lbfgs_line_search", "lbfgs_history_mode",
                         "lbfgs_damping", "lbfgs_momentum", "lbfgs_variance_scaling", "betas") + NGD_KEYS,
           "trainable": ("phases", "milestones") + NGD_KEYS,
           "schedule": ("milestones",),
           "lbfgs_variant": ("lbfgs_history", "lbfgs_max_iter", "lbfgs_batch_size", "lbfgs_line_search",
                             "lbfgs_variance_scaling")}


# ---------------------------------------------------------------- naming

def settings(config):
    """Return the settings of a config that describe the experiment (no bookkeeping)."""
    return {key: value for key, value in config.items()
            if key not in BOOKKEEPING_KEYS and not key.startswith("checkpoint")}


def canonical(value):
    """Return a hashable text form of a JSON value, so lists and dicts compare too."""
    return json.dumps(value, sort_keys=True)


def differing_settings(configs, ignore=frozenset()):
    """Return the setting names (not in `ignore`) whose values are not all equal, in first-seen order."""
    all_settings = [settings(config) for config in configs]
    keys = list(dict.fromkeys(key for each in all_settings for key in each if key not in ignore))
    return [key for key in keys
            if len({canonical(each.get(key)) for each in all_settings}) > 1]


def display_value(key, value):
    """Return a setting's value as shown to a reader (optimizers upper-cased: 'SGD')."""
    if key == "optimizer" and isinstance(value, str):
        return value.upper()
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def file_token(text):
    """Return `text` with every character outside [A-Za-z0-9.+-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9.+\-]", "_", text)


def run_prefix(run):
    """Return '<arch>_<OPTIMIZER>_<trainable>' from the config, else the folder name."""
    config = run["config"] or {}
    parts = [config.get("arch"), config.get("optimizer"), config.get("trainable")]
    if any(part is None for part in parts):
        return file_token(run["name"])
    parts[1] = display_value("optimizer", parts[1])
    return "_".join(file_token(str(part)) for part in parts)


def unique_prefixes(runs):
    """Return one file-name prefix per run, adding '_<folder>' (then '_<n>') on clashes."""
    prefixes = [run_prefix(run) for run in runs]
    prefixes = [f"{prefix}_{file_token(run['name'])}" if prefixes.count(prefix) > 1 else prefix
                for prefix, run in zip(prefixes, runs)]
    return [f"{prefix}_{index + 1}" if prefixes.count(prefix) > 1 else prefix
            for index, prefix in enumerate(prefixes)]


def leading_settings(keys, configs):
    """`keys` without the settings that follow another one in `keys` (FOLLOWS): SGD against Adam is a
    difference of optimizer, whatever their default learning rates. An ngd setting follows only where
    one of `configs` lacks it."""
    for leader, followers in FOLLOWS.items():
        if leader in keys:
            keys = [key for key in keys if key not in followers
                    or key in NGD_KEYS and all(key in config for config in configs)]
    return keys


def run_labels(runs, ignore=frozenset()):
    """Return a short legend label per run (or group): the differing settings, else the folder name."""
    if len(runs) < 2 or any(run["config"] is None for run in runs):
        return [run["name"] for run in runs]
    configs = [run["config"] for run in runs]
    keys = leading_settings(differing_settings(configs, ignore), configs)
    labels = [", ".join(f"{key}={display_value(key, run['config'].get(key))}" for key in keys)
              or run["name"] for run in runs]
    return [twin_label(label, run, [other for text, other in zip(labels, runs) if text == label], keys, ignore)
            for label, run in zip(labels, runs)]


def twin_label(label, run, twins, keys, ignore):
    """A label shared by several runs gets the settings that tell those runs apart (a setting that follows
    another, such as the L-BFGS damping, counts here), or else the folder name."""
    if len(twins) < 2:
        return label
    extra = [key for key in differing_settings([twin["config"] for twin in twins], ignore) if key not in keys]
    if not extra:
        return f"{label} ({run['name']})"
    return ", ".join([label, *(f"{key}={display_value(key, run['config'].get(key))}" for key in extra)])


def shared_title(runs):
    """Return 'arch, trainable=..., OPTIMIZER' from the values all runs share."""
    parts = []
    for key in ("arch", "trainable", "optimizer"):
        values = {canonical((run["config"] or {}).get(key)) for run in runs}
        value = (runs[0]["config"] or {}).get(key)
        if len(values) == 1 and value is not None:
            text = display_value(key, value)
            parts.append(f"trainable={text}" if key == "trainable" else text)
    return ", ".join(parts)


# ---------------------------------------------------------------- seed groups

def group_key(run):
    """Return the settings that define a run's seed group as text (None for a run without config)."""
    if run["config"] is None:
        return None
    return canonical({key: value for key, value in settings(run["config"]).items() if key not in SEED_KEYS})


def group_runs(runs):
    """Return the runs in seed groups: same settings but SEED_KEYS (see analysis.group_runs)."""
    return analysis.group_runs(runs, group_key)


def group_ignore(groups):
    """Return the settings labels and comparisons skip: SEED_KEYS once a group has several runs."""
    return SEED_KEYS if any(len(group["runs"]) > 1 for group in groups) else frozenset()


def group_labels(groups):
    """Return a legend label per group: the settings in which the groups differ, plus '(n seeds)'."""
    labels = run_labels(groups, group_ignore(groups))
    return [label + analysis.seeds_note(group) for label, group in zip(labels, groups)]


def results_table(runs, names=None):
    """Return the markdown table of `runs`, one row per seed group (see analysis.markdown_table), each
    named by `names` (one per group) where given."""
    groups = group_runs(runs)
    labels = run_labels(groups, group_ignore(groups)) if names is None else names
    return analysis.markdown_table([(label, [run["history"] for run in group["runs"]])
                                    for label, group in zip(labels, groups)])
