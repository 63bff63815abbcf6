"""Read run folders (config.json, history.csv, summary.json, checkpoint.pt) into plain dicts.

plots.py and sweep_plots.py draw from these; bench.py and bench_audio.py read their timed runs' rows with
them. Nothing here imports the trainer, so a run is read without torch (checkpoint.pt, for the γ pictures,
loads it then).
A folder that cannot be read raises RunError, whose message reads '<what> in <path>; <how to fix>'.
"""

import csv
import dataclasses
import json
import math
import os

from bnonly.runs import analysis  # pure numbers: the compute axes of a history, γ statistics
from bnonly.config import IMAGE_DEFAULTS, LBFGS_DEFAULTS, Config  # the settings' defaults

# The trainer's defaults (config.py is plain Python: no torch, no trainer code).
# (arch, width, epochs and batch size default per domain; runs from before the audio data were of images)
# (warmup_epochs and image_size default per dataset too: for the runs of before, 0 and 32)
SETTING_DEFAULTS = {**{f.name: f.default for f in dataclasses.fields(Config)}, **IMAGE_DEFAULTS,
                    "warmup_epochs": 0, "image_size": 32}

REQUIRED_COLUMNS = ("epoch", "train_loss", "train_acc")
# Numeric columns read; `phase` is read as text; any other column is ignored unread.
KNOWN_COLUMNS = REQUIRED_COLUMNS + (
    "lr", "val_loss", "val_acc", "test_loss", "test_acc", "val_acc5", "test_acc5",
    "val_adapted_loss", "val_adapted_acc", "test_adapted_loss", "test_adapted_acc",
    "epoch_seconds", "eval_seconds", "images_per_second", "passes", "rollbacks",
    "images_forward_backward", "images_forward_only",
)


class RunError(Exception):
    """A run folder that cannot be read; the message reads '<what> in <path>; <how to fix>'."""


def read_config(path):
    """Return the settings dict in `path` (a config.json), or raise RunError."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise RunError(f"invalid JSON ({e.msg}, line {e.lineno}) in {path}; "
                       "fix the file or delete it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"unreadable config ({e.__class__.__name__}) in {path}; "
                       "fix its permissions or delete it") from None
    if not isinstance(config, dict):
        raise RunError(f"config is not a JSON object in {path}; "
                       "it must hold a dict of settings")
    return config


def parse_cell(text, column, line, path):
    """Return one history cell as a float; an empty cell is a gap (NaN)."""
    text = text.strip()
    if text == "":
        return math.nan
    try:
        return float(text)  # also accepts 'nan' and 'inf' from diverged runs
    except ValueError:
        raise RunError(f"non-numeric value {text!r} in column {column}, line {line} "
                       f"in {path}; fix or delete that row") from None


def read_history(path):
    """Return {column: [float per epoch]} for the known columns of `path` (a history.csv).

    The text column `phase` (e.g. 'bn' then 'all'), when present, is kept as [str per epoch].
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # tolerate a BOM
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"unreadable CSV ({e.__class__.__name__}) in {path}; "
                       "rewrite it with the trainer") from None
    header = [name.strip() for name in rows[0]] if rows else []
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise RunError(f"missing column(s) {', '.join(missing)} in {path}; "
                       "the header must name at least " + ", ".join(REQUIRED_COLUMNS))
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise RunError(f"no rows in {path}; train for at least one epoch first")
    columns = [(name, header.index(name)) for name in KNOWN_COLUMNS if name in header]
    texts = [(name, header.index(name)) for name in analysis.TEXT_COLUMNS if name in header]
    history = {name: [] for name, _ in columns + texts}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise RunError(f"row with {len(row)} fields under a {len(header)}-column header, "
                           f"line {line} in {path}; fix or delete that row")
        for name, index in columns:
            history[name].append(parse_cell(row[index], name, line, path))
        for name, index in texts:
            history[name].append(row[index].strip())
    if any(math.isnan(epoch) for epoch in history["epoch"]):
        raise RunError(f"empty epoch cell in {path}; every row needs its epoch number")
    return history


def folder_name(path):
    """Return the last component of a folder path ('runs/a/' -> 'a', '.' -> cwd's name)."""
    return os.path.basename(os.path.abspath(path))


def read_folder(path):
    """Return {'name', 'path', 'config'} for a run folder (config None without config.json)."""
    if not os.path.isdir(path):
        raise RunError(f"no such folder {path}; check the path")
    config_path = os.path.join(path, "config.json")
    config = read_config(config_path) if os.path.exists(config_path) else None
    return {"name": folder_name(path), "path": path, "config": None if config is None else with_defaults(config)}


def with_defaults(config):
    """The settings of a config.json as compared and shown: settings added to the trainer after the run
    was made take their defaults (an older run is not 'different' in them), a --phases run shows
    its phases as its `trainable` value, e.g. 'bn:5,all:155', and a stochastic L-BFGS variant shows as
    its own optimizer, e.g. 'lbfgs-multibatch' (torch's L-BFGS stays 'lbfgs'), and --precision auto shows as
    the precision it resolved to, so an auto run computed in fp32 is a seed of an fp32 one."""
    if "lbfgs_variant" not in config:  # a run from before the L-BFGS variants: its L-BFGS settings were torch's
        config = {"lbfgs_variant": "torch", **LBFGS_DEFAULTS["torch"], **config}
    config = {**{k: v for k, v in SETTING_DEFAULTS.items() if k not in config}, **config}
    config.setdefault("resolved_precision", "fp32")  # runs from before --precision were fp32
    if config.get("precision") == "auto":  # a request: the run is what it resolved to (fp32 on an older CPU)
        config["precision"] = config["resolved_precision"]
    config.setdefault("world_size", 1)  # runs from before torchrun support had one process
    if config.get("phases"):
        config["trainable"] = ",".join(":".join(map(str, phase)) for phase in config["phases"])
    if config.get("optimizer") == "lbfgs" and config["lbfgs_variant"] != "torch":  # another algorithm
        config["optimizer"] = f"lbfgs-{config['lbfgs_variant']}"
    if not str(config.get("optimizer")).startswith("lbfgs"):  # settings it never used: runs made before and
        config = {k: v for k, v in config.items() if not k.startswith("lbfgs_")}  # after new ones compare equal
    if config.get("optimizer") != "ngd" and "ngd" not in str(config.get("trainable")):  # nor ngd's (whose
        config = {k: v for k, v in config.items() if not k.startswith("ngd_")}  # defaults changed, 2026-12-05)
    return config


def read_run(path):
    """Return {'name', 'path', 'config', 'history'} for one run folder, or raise RunError.

    `config` is None when the folder has no config.json; `history` maps each known
    column of history.csv to one float per epoch (and `phase` to its text).
    """
    run = read_folder(path)
    history_path = os.path.join(path, "history.csv")
    if not os.path.isfile(history_path):
        raise RunError(f"no history.csv in {path}; pass a folder written by the trainer")
    summary_path = os.path.join(path, "summary.json")
    summary = read_config(summary_path) if os.path.isfile(summary_path) else None
    return {**run, "history": analysis.add_compute_axes(read_history(history_path), run["config"]),
            "summary": summary}


def run_folders(paths):
    """The run folders named: each path itself, or for a sweep folder (no history.csv, run folders
    inside) the run folders in it, in name order."""
    folders = []
    for path in paths:
        inside = sorted(entry.path for entry in os.scandir(path) if entry.is_dir() and
                        os.path.isfile(os.path.join(entry.path, "history.csv"))) \
            if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "history.csv")) else []
        folders += inside or [path]
    return folders


def read_gamma_run(path):
    """Return {'name', 'path', 'config', 'gamma'}: `analysis.gamma_stats` of the folder's checkpoint.pt."""
    run = read_folder(path)
    checkpoint_path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(checkpoint_path):
        raise RunError(f"no checkpoint.pt in {path}; train until the trainer saves one")
    import torch  # only --gamma needs torch: curves and tables stay quick to start

    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types: pickle, zip, OS and runtime errors
        raise RunError(f"unreadable checkpoint ({e.__class__.__name__}) in {checkpoint_path}; "
                       "rewrite it with the trainer") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise RunError(f"no 'model' state_dict in {checkpoint_path}; pass a checkpoint written by the trainer")
    stats = analysis.gamma_stats(checkpoint["model"])
    if not stats["layers"]:
        raise RunError(f"no BatchNorm layer in checkpoint.pt in {path}; pass a BN network's run folder")
    return {**run, "gamma": stats}
