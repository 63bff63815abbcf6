"""Pure computations on the plain data of run folders: seed statistics, the markdown
results table, phase switches and BatchNorm γ statistics.

Imports neither matplotlib nor torch, so the trainer can import `gamma_stats` to put its
numbers into summary.json, and `plots.py` draws what these functions return.
A history is {column: [value per epoch]} as `run_reader.read_history` returns it: floats,
except the optional text column `phase`.
"""

import math
import os

TEXT_COLUMNS = ("phase",)  # history columns kept as text, never averaged
ACC_DECIMALS = 2  # percent
LOSS_DECIMALS = 4
PASSES_DECIMALS = 0
IMAGE_PASSES_DECIMALS = 3  # millions
MISSING = "–"  # a table cell for a metric the runs did not record


# ---------------------------------------------------------------- seed statistics

def mean_std(values):
    """Return (mean, sample standard deviation with ddof=1); the std is NaN below two values.

    A NaN value (a diverged or missing epoch) makes both NaN: a gap, not a silent skip.
    """
    values = [float(value) for value in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def truncate(history, epochs):
    """Return the first `epochs` rows of every column of a history."""
    return {column: values[:epochs] for column, values in history.items()}


def common_epochs(histories):
    """Return the number of epochs that every history has (the shortest run's length)."""
    return min(len(history["epoch"]) for history in histories)


def mean_curves(histories):
    """Return (mean history, std history) over runs, on the epochs all runs have.

    Only columns every run has are kept; `epoch` and text columns come from the first run.
    The std history (sample std, ddof=1) has the numeric columns except `epoch`.
    """
    length = common_epochs(histories)
    histories = [truncate(history, length) for history in histories]
    columns = [column for column in histories[0] if all(column in history for history in histories)]
    mean, std = {}, {}
    for column in columns:
        if column == "epoch" or column in TEXT_COLUMNS:
            mean[column] = histories[0][column]
            continue
        pairs = [mean_std(row) for row in zip(*(history[column] for history in histories))]
        mean[column] = [pair[0] for pair in pairs]
        std[column] = [pair[1] for pair in pairs]
    return mean, std


def group_name(names):
    """Return a group's name: the folder name of a single run, else the names' common start."""
    if len(names) == 1:
        return names[0]
    return os.path.commonprefix(names).rstrip("_-. ") or names[0]


def group_runs(runs, key):
    """Return runs ({'name', 'config', 'history'}) gathered by `key(run)`, in first-seen order.

    Runs with equal keys are repeats that differ only in seed; key None keeps a run alone.
    A group is {'name', 'config', 'runs', 'history', 'std'}. For several runs, `history` holds
    their mean curves on the epochs all of them have and `std` the sample std (ddof=1) per
    epoch; a single run keeps its history unchanged and an empty `std`.
    """
    members = {}
    for index, run in enumerate(runs):
        run_key = key(run)
        members.setdefault(("alone", index) if run_key is None else run_key, []).append(run)
    groups = []
    for group in members.values():
        history, std = (group[0]["history"], {}) if len(group) == 1 else \
            mean_curves([run["history"] for run in group])
        groups.append({"name": group_name([run["name"] for run in group]), "config": group[0]["config"],
                       "runs": group, "history": history, "std": std})
    return groups


def seeds_note(series):
    """Return ' (n seeds)' for a group of n > 1 runs, else '' (also for a plain run)."""
    count = len(series.get("runs", ()))
    return f" ({count} seeds)" if count > 1 else ""


# ---------------------------------------------------------------- results table

def held_out_split(histories):
    """Return 'val' when every run has val_acc, else 'test' when every run has test_acc, else None."""
    for split in ("val", "test"):
        if all(f"{split}_acc" in history for history in histories):
            return split
    return None


def finite_max(values):
    """Return the largest non-NaN value, or NaN when there is none."""
    return max((value for value in values if not math.isnan(value)), default=math.nan)


def run_metrics(history, split):
    """Return the table's numbers for one run: final and best `split` accuracy, final train
    accuracy and loss, its total passes, and the final and best `split` accuracy with --bn-adapt's
    statistics (None where a column is missing)."""
    held_out = history.get(f"{split}_acc") if split else None
    adapted = history.get(f"{split}_adapted_acc") if split else None
    top5 = history.get(f"{split}_acc5") if split else None
    passes = history.get("passes")
    spent = history.get("image_passes")
    return {
        "final_acc": held_out[-1] if held_out else None,
        "best_acc": finite_max(held_out) if held_out else None,
        "final_train_acc": history["train_acc"][-1],
        "final_train_loss": history["train_loss"][-1],
        "passes": sum(value for value in passes if not math.isnan(value)) if passes else None,
        "image_passes": spent[-1] / 1e6 if spent else None,
        "final_adapted_acc": adapted[-1] if adapted else None,
        "best_adapted_acc": finite_max(adapted) if adapted else None,
        "final_acc5": top5[-1] if top5 else None,
    }


def format_mean_std(values, decimals):
    """Return 'mean ± std' (sample std) of `values`, just the value for one run, '–' for None."""
    if any(value is None for value in values):
        return MISSING
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def group_cells(label, histories):
    """Return one table row (a list of cell texts) for a group of runs that differ only in seed.

    Every run is cut to the epochs all of them have, so the group's numbers are comparable.
    """
    length = common_epochs(histories)
    split = held_out_split(histories)
    metrics = [run_metrics(truncate(history, length), split) for history in histories]
    decimals = {"final_acc": ACC_DECIMALS, "best_acc": ACC_DECIMALS, "final_train_acc": ACC_DECIMALS,
                "final_train_loss": LOSS_DECIMALS, "passes": PASSES_DECIMALS, "image_passes": IMAGE_PASSES_DECIMALS,
                "final_adapted_acc": ACC_DECIMALS, "best_adapted_acc": ACC_DECIMALS, "final_acc5": ACC_DECIMALS}
    cells = [label.replace("|", "\\|"), str(len(histories)), str(length)]
    cells += [format_mean_std([each[key] for each in metrics], places) for key, places in decimals.items()]
    return cells, split


def markdown_table(groups):
    """Return a markdown table with one row per (label, [history per run]) pair.

    Columns: label, n, epochs, final and best val accuracy (test when a group has no val),
    final train accuracy, final train loss, total passes and image-passes (millions, see add_compute_axes)
    per run, each as mean ± std; then, when any run has them, the final and best held-out accuracy with
    --bn-adapt's statistics; last, when any run has it, the final held-out top-5 accuracy.
    """
    rows, splits = zip(*(group_cells(label, histories) for label, histories in groups))
    top5 = [row[-1] for row in rows]
    rows = [row[:-1] for row in rows]
    held_out = f"{splits[0]}_acc" if len(set(splits)) == 1 and splits[0] else "held-out acc"
    if held_out == "held-out acc":  # mixed: say per cell which split it is
        rows = [row[:3] + [f"{cell} ({split})" if split else cell for cell in row[3:5]] + row[5:-2]
                + [f"{cell} ({split})" if split and cell != MISSING else cell for cell in row[-2:]]
                for row, split in zip(rows, splits)]
    header = ["run", "n", "epochs", f"final {held_out}", f"best {held_out}", "final train_acc",
              "final train_loss", "passes", "image-passes (M)"]
    if any(cell != MISSING for row in rows for cell in row[-2:]):
        adapted = held_out.replace("_acc", "_adapted_acc") if held_out.endswith("_acc") else "adapted acc"
        header += [f"final {adapted}", f"best {adapted}"]
    else:
        rows = [row[:-2] for row in rows]
    if any(cell != MISSING for cell in top5):  # runs made before top-5 was recorded have none
        header.append(f"final {held_out.replace('_acc', '')} top-5" if held_out.endswith("_acc") else "top-5")
        rows = [row + [cell] for row, cell in zip(rows, top5)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- compute axes

# What a forward-only image costs, in forward+backward image-passes. BN-only ResNet-32, batch 128, fp32 on
# the CPU: a forward pass without gradient ran 555-573 img/s, a forward+backward pass 194-284 img/s
# (Intel Xeon with AMX, 2026-12-01), a ratio of 0.34-0.51; the upper end is used, so a variant that
# spends forward-only passes (a line search) is not flattered.
FORWARD_ONLY_COST = 0.5
X_AXES = {"epoch": "epoch", "image_passes": "image-passes (forward+backward; forward-only counts 1/2)",
          "wall_seconds": "wall-clock seconds (training and evaluation)"}


def cumulative(values):
    """Running sums of a list of floats."""
    total, sums = 0.0, []
    for value in values:
        total += value
        sums.append(total)
    return sums


def add_compute_axes(history, config):
    """Add `image_passes` and `wall_seconds` to a history: the compute spent by the end of each epoch.

    image-passes = images through forward+backward + FORWARD_ONLY_COST x images through forward only.
    Epochs from before those counters were written count `passes` x the step's global batch from the
    config (the last, smaller batch of an epoch as a full one). Without either there is no image axis.
    """
    history = dict(history)
    epochs = len(history["epoch"])
    missing = [math.nan] * epochs
    config = config or {}
    batch = config.get("lbfgs_batch_size") if str(config.get("optimizer")).startswith("lbfgs") else \
        config.get("batch_size")
    spent = []
    for fb, fwd, passes in zip(history.get("images_forward_backward", missing),
                               history.get("images_forward_only", missing), history.get("passes", missing)):
        if not math.isnan(fb):
            spent.append(fb + FORWARD_ONLY_COST * (0.0 if math.isnan(fwd) else fwd))
        else:  # an epoch from before the counters (e.g. of a resumed older run)
            spent.append(passes * batch * config.get("world_size", 1) if batch else math.nan)
    if not all(math.isnan(value) for value in spent):
        history["image_passes"] = cumulative(spent)
    if "epoch_seconds" in history:
        history["wall_seconds"] = cumulative(history["epoch_seconds"])
    return history


# ---------------------------------------------------------------- phases

def phase_changes(history):
    """Return [{'epoch': e, 'label': 'bn → all'}, ...], one per switch of the `phase` column.

    `e` is the last epoch of the old phase: a row is measured at the end of its epoch, so the
    switch happens right there. Empty phase cells and a missing column give no switch.
    """
    phases = history.get("phase") or []
    return [{"epoch": history["epoch"][index - 1], "label": f"{before} → {after}"}
            for index, (before, after) in enumerate(zip(phases, phases[1:]), start=1)
            if before and after and before != after]


def phase_marks(histories):
    """Return the phase switches of all `histories`, each once, sorted by epoch."""
    marks = {(mark["epoch"], mark["label"]) for history in histories for mark in phase_changes(history)}
    return [{"epoch": epoch, "label": label} for epoch, label in sorted(marks)]


# ---------------------------------------------------------------- BatchNorm γ

def as_floats(value):
    """Return the entries of a tensor, array or sequence as a flat list of Python floats."""
    value = value.tolist() if hasattr(value, "tolist") else value
    return [float(item) for item in value] if isinstance(value, (list, tuple)) else [float(value)]


def bn_layers(state_dict):
    """Return the BatchNorm layer names in model order: each prefix P with P.weight and P.running_mean."""
    return [key[:-len(".weight")] for key in state_dict
            if key.endswith(".weight") and key[:-len(".weight")] + ".running_mean" in state_dict]


def stage_of(layer):
    """Return a BN layer's stage: 'stem' for a top-level layer (bn1), else its first name part."""
    return layer.split(".")[0] if "." in layer else "stem"


def gamma_stats(state_dict, threshold=0.01):
    """Return the BatchNorm scale statistics of a model state_dict as plain data.

    {"threshold": t, "overall": fraction of all BN channels with |γ| < t (channel-weighted),
     "layers": {layer: fraction with |γ| < t, in model order},
     "stages": {stage: {"gamma": [γ...], "beta": [β...]}}}
    γ is `<layer>.weight`, β `<layer>.bias`; values may be tensors or lists of numbers.
    `overall` is NaN when the state_dict has no BatchNorm layer.
    """
    layers, stages = {}, {}
    disabled = channels = 0
    for layer in bn_layers(state_dict):
        gamma = as_floats(state_dict[f"{layer}.weight"])
        beta = as_floats(state_dict[f"{layer}.bias"]) if f"{layer}.bias" in state_dict else []
        small = sum(abs(value) < threshold for value in gamma)
        layers[layer] = small / len(gamma) if gamma else math.nan
        disabled, channels = disabled + small, channels + len(gamma)
        stage = stages.setdefault(stage_of(layer), {"gamma": [], "beta": []})
        stage["gamma"] += gamma
        stage["beta"] += beta
    return {"threshold": threshold, "overall": disabled / channels if channels else math.nan,
            "layers": layers, "stages": stages}
