"""The decoded-data cache of the folder datasets (imagefolder, audiofolder), and their error type.

A folder of image or sound files is decoded once into one .npz file of arrays; its name is a hash of every
file's path, size and modification time and of the decoding settings, so any change to the folder or to
the settings makes a new one. Read without pickle; written atomically.
"""

import hashlib
import os

import numpy as np
import torch

from bnonly.config import ConfigError

CACHE_VERSION = 3


class DataError(ConfigError):
    """Missing or corrupt data; the message names the problem and the fix."""


def split_folders(data_dir: str, dataset: str, files: str) -> dict:
    """{"train": DATA_DIR/train, "test": DATA_DIR/test or DATA_DIR/val when there is one (imagenet: val/
    first)}; DataError naming the layout (`files`: what the class folders hold) when train/ is missing."""
    root = os.path.expanduser(data_dir)
    folders = {"train": os.path.join(root, "train")}
    if not os.path.isdir(folders["train"]):
        raise DataError(f"no folder {folders['train']}; --dataset {dataset} needs DATA_DIR/train/<class>/{files}")
    for name in ("val", "test") if dataset == "imagenet" else ("test", "val"):  # ILSVRC's test/ has no labels
        if os.path.isdir(os.path.join(root, name)):
            folders["test"] = os.path.join(root, name)
            break
    return folders


def class_folders(folders: dict) -> list:
    """The class names (sorted folder names) of the training split; DataError when it has fewer than two or
    when another split's class folders differ from them (a class missing, or one more)."""
    listing = {name: sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
               for name, folder in folders.items()}
    classes = listing["train"]
    if len(classes) < 2:
        raise DataError(f"{folders['train']} has {'one class folder' if classes else 'no class folders'}: a "
                        f"classifier needs at least two (DATA_DIR/train/<class>/)")
    for name, found in listing.items():
        if found != classes:
            odd = sorted(set(found) ^ set(classes))[0]
            where = "only in" if odd in found else "missing from"
            raise DataError(f"class folder {odd!r} is {where} {folders[name]}: every split needs the class "
                            f"folders of {folders['train']}")
    return classes


def cache_key(folders: dict, settings: str) -> str:
    """Hash of every folder and every file's path, size and modification time under the split folders
    (symbolic links followed) and of the decoding `settings`: any change to them (a file added, removed,
    renamed, replaced or moved to another class; a class folder added) gets a new key."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {settings}".encode())
    for name, folder in sorted(folders.items()):
        for parent, dirs, names in os.walk(os.path.abspath(folder), followlinks=True):  # as torchvision lists
            dirs.sort()
            digest.update(f"{name}\0{parent}\0{len(dirs)}\0{chr(0).join(dirs)}\n".encode())  # empty folders too
            for file in sorted(names):
                stat = os.stat(os.path.join(parent, file))
                digest.update(f"{name}\0{parent}\0{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cache_file(cache_dir: str, dataset: str, folders: dict, settings: str) -> str:
    """The cache path of `dataset`'s decoded `folders` under `settings` (see cache_key)."""
    return os.path.join(os.path.expanduser(cache_dir), f"{dataset}-{cache_key(folders, settings)}.npz")


def read_cache(path: str):
    """(splits, class names, file names by split ({} when not stored)) from the cache, or None when there
    is no usable cache."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            splits = {n[len("images_"):]: (torch.from_numpy(arrays[n]), torch.from_numpy(arrays[f"labels_{n[7:]}"]))
                      for n in arrays.files if n.startswith("images_")}
            names = {n[len("names_"):]: [str(f) for f in arrays[n]] for n in arrays.files if n.startswith("names_")}
            return splits, [str(c) for c in arrays["classes"]], names
    except Exception:
        return None  # a damaged cache is rebuilt, not trusted


def write_cache(path: str, splits: dict, classes: list, names: dict = None) -> None:
    """Write atomically; a cache that cannot be written only costs the next run a re-decode. `splits` hold
    the decoded inputs (images or waves) as `images_<split>`; `names` the file names of each split."""
    arrays = {"classes": np.array(classes, dtype=str)}
    for name, (inputs, labels) in splits.items():
        arrays[f"images_{name}"] = inputs.numpy()
        arrays[f"labels_{name}"] = labels.numpy()
    for name, files in (names or {}).items():
        arrays[f"names_{name}"] = np.array(files, dtype=str)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
