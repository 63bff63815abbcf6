"""The run folder: config.json, history.csv, checkpoint.pt, summary.json, each written atomically.

A file is written to a temporary name in the same folder and moved into place with os.replace, so a
kill at any instant leaves the last complete version. Checkpoints load only with weights_only=True.
"""

import csv
import io
import json
import math
import os
import random
import warnings

import numpy as np
import torch

from bnonly.config import AUDIO_DATASETS, ConfigError

RUN_FILES = ("config.json", "history.csv", "checkpoint.pt", "summary.json")


class CheckpointError(ConfigError):
    """A missing, corrupt, unsafe or mismatched checkpoint."""


def atomic_write(path: str, write) -> None:
    """Call write(binary file) on a temporary file next to `path`, then move it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data: dict) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def format_value(value) -> str:
    # repr gives the shortest text that reads back to the same float: resumed runs compare to the digit
    return repr(value) if isinstance(value, float) else str(value)


def write_history(path: str, rows: list) -> None:
    """history.csv: one row per epoch, columns from the row dicts. A column that earlier rows lack (a run
    resumed from a checkpoint made before the column existed) is empty in them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row[k]) if k in row else "" for k in columns])
    atomic_write(path, lambda fh: fh.write(buffer.getvalue().encode()))


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run draws from, as plain tensors and numbers (weights_only-loadable)."""
    state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(), "data": generator.get_state(), "data_device": generator.device.type,
            "python": random.getstate(),
            "numpy": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)), "pos": state["state"]["pos"],
                      "has_gauss": state["has_gauss"], "gauss": state["gauss"]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what rng_state saved."""
    drawn_on = state.get("data_device", "cpu")
    if drawn_on != generator.device.type:
        raise CheckpointError(f"--resume: the run's data order was drawn on {drawn_on}; "
                              f"resume it with --device {drawn_on} (-e works on any device)")
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": numpy["key"].numpy().astype(np.uint32),
                         "pos": numpy["pos"]}, "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(path: str) -> str:
    """A run folder or a checkpoint file -> the checkpoint file; CheckpointError if there is none."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}; give a run folder or its checkpoint.pt")
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True: plain tensors and containers, never arbitrary code."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles; the error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = "it holds objects that are not plain data (refused: loading it could run code)" \
            if "weights_only" in str(e) or "Unsupported global" in str(e) else "it is not a readable checkpoint"
        raise CheckpointError(f"--resume: cannot load {path}: {reason}; give a checkpoint.pt written by train.py") \
            from None
    keys = {"model", "config", "epoch", "normalization", "rng"}
    if not isinstance(state, dict) or not keys <= set(state) or not isinstance(state["config"], dict) \
            or not isinstance(state["epoch"], int) or not _is_normalization(state["normalization"], state["config"]):
        raise CheckpointError(f"--resume: {path} is not a train.py checkpoint (it lacks a valid "
                              f"{'/'.join(sorted(keys))}); give a checkpoint.pt written by train.py")
    return state


def _is_normalization(value, config: dict) -> bool:
    """A mean and a std per colour channel, or per mel band for audio data."""
    size = config.get("n_mels") if config.get("dataset") in AUDIO_DATASETS else 3
    return isinstance(value, dict) and all(
        isinstance(value.get(k), list) and len(value[k]) == size and all(isinstance(v, float) for v in value[k])
        for k in ("mean", "std"))


def existing_run_files(save_dir: str) -> list:
    return [name for name in RUN_FILES if os.path.exists(os.path.join(save_dir, name))]


def check_save_dir(save_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse to clobber an existing run or to start a run that could not be saved; writes nothing.

    `resuming`: save_dir is the folder of the checkpoint being resumed, whose files may be replaced.
    """
    found = existing_run_files(save_dir) if os.path.isdir(save_dir) else []
    if found and not (overwrite or resuming):
        raise ConfigError(f"--save-dir {save_dir} already holds a run ({', '.join(found)}); "
                          f"continue it with --resume {save_dir}, or pass --overwrite, or choose another folder")
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ConfigError(f"--save-dir {save_dir} is a file, not a folder; choose another path")
    ancestor = os.path.abspath(save_dir)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"--save-dir {save_dir}: {ancestor} is a file, so the folder cannot be made; "
                          f"choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--save-dir {save_dir}: {ancestor} is not writable; choose a folder you can write to")


def summarize(rows: list, trainable_params: int, total_params: int, world_size: int, gamma=None) -> dict:
    """summary.json: sizes, final and best metrics, total time and passes, and (`gamma`, from
    analysis.gamma_stats) the fraction of BatchNorm features switched off (|gamma| below a threshold)."""
    summary = {"trainable_params": trainable_params, "total_params": total_params,
               "epochs_completed": rows[-1]["epoch"] if rows else 0, "world_size": world_size,
               "wall_seconds": sum(r["epoch_seconds"] for r in rows), "passes": sum(r["passes"] for r in rows)}
    if gamma is not None:
        summary["disabled_features"] = {k: gamma[k] for k in ("threshold", "overall", "layers")}
    if not rows:
        return summary
    summary["final"] = {k: v for k, v in rows[-1].items() if k.endswith(("_loss", "_acc", "_acc5"))}
    for key in ("val_acc", "test_acc", "train_acc", "val_adapted_acc", "test_adapted_acc", "val_acc5", "test_acc5"):
        if key in rows[-1]:  # rows from before a column existed (a resumed older run) lack it
            best = max((r for r in rows if key in r), key=lambda r: r[key] if math.isfinite(r[key]) else -1.0)
            summary[f"best_{key}"] = best[key]
            summary[f"best_{key}_epoch"] = best["epoch"]
    return summary
