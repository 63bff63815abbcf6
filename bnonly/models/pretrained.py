"""Starting weights from a file (`--init-from`), loaded into a freshly built model before it is frozen.

The file is a state dict (torchvision's or timm's .pth), or a checkpoint that holds one under "model"
(train.py's checkpoint.pt) or "state_dict"; torch.load reads it with weights_only=True: tensors and plain
containers, never code. Keys that all start with "module." (DistributedDataParallel) or "_orig_mod."
(torch.compile) are read without that prefix.

Loading is strict but for two things: the classifier (freezing.final_linear, the model's last nn.Linear)
keeps its fresh init where the file's has another number of classes (ImageNet's 1,000 onto CIFAR-10's 10:
the returned note says so), and BatchNorm's num_batches_tracked counters may be missing (torchvision's
older files lack them; the model's own stay). Any other difference is a ModelError that names the first
key at fault: a key the model does not have, another shape (both given), a key the file lacks.
"""

import warnings

import torch
import torch.nn as nn

from bnonly.models import ModelError
from bnonly.models.freezing import final_linear

STATE_KEYS = ("model", "state_dict")  # where checkpoints keep the weights: train.py's, and many others'
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's
OPTIONAL_SUFFIX = ".num_batches_tracked"  # BN's step counter: only the momentum=None average reads it


def read_state_dict(path: str) -> dict:
    """The {name: tensor} weights in the file at `path` (on the CPU), wrapper prefixes removed."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles; the error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise ModelError(f"cannot read the file: {e.strerror}") from None
    except Exception as e:
        reason = "it holds objects that are not plain data (refused: loading it could run code)" \
            if "Unsupported global" in str(e) or "allowed global" in str(e) else "it is not a file torch.save wrote"
        raise ModelError(f"{reason}; give a state dict or a checkpoint.pt") from None
    for key in STATE_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"it holds no state dict (a mapping of names to tensors, plain or under "
                         f"{' or '.join(repr(k) for k in STATE_KEYS)})")
    return strip_prefixes(state)


def strip_prefixes(state: dict) -> dict:
    """`state` without the WRAPPER_PREFIXES that every key starts with ("module._orig_mod.x" -> "x")."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped = True
    return state


def classifier_keys(model: nn.Module) -> tuple:
    """The state-dict names of the final linear layer's weight and bias ((), without one)."""
    classifier = final_linear(model)
    for name, module in model.named_modules():
        if module is classifier:
            return tuple(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return ()


def load_pretrained(model: nn.Module, path: str) -> list:
    """Load the weights in `path` into `model` (see the module docstring); returns notes for the user
    (the classifier kept fresh), or raises ModelError."""
    state = read_state_dict(path)
    expected = model.state_dict()
    fresh = classifier_keys(model)
    weight = fresh[0] if fresh else None
    other_classes = weight in state and state[weight].dim() == 2 and \
        state[weight].shape[1:] == expected[weight].shape[1:] and state[weight].shape[0] != expected[weight].shape[0]
    for key, value in state.items():
        if key not in expected:
            raise ModelError(f"the file's {key!r} is not a parameter or buffer of the model "
                             f"(its {len(expected)} keys start {next(iter(expected))!r})")
        if value.shape != expected[key].shape and not (other_classes and key in fresh):
            raise ModelError(f"{key!r} has shape {tuple(value.shape)} in the file and {tuple(expected[key].shape)} "
                             f"in the model")
    missing = [key for key in expected if key not in state and not key.endswith(OPTIONAL_SUFFIX)]
    if missing:
        raise ModelError(f"the file lacks the model's {missing[0]!r} ({len(missing)} of its keys are missing)")
    skipped = fresh if other_classes else ()
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    if not other_classes:
        return []
    return [f"the file's classifier {weight.rsplit('.', 1)[0]} has {state[weight].shape[0]} classes and the data "
            f"{expected[weight].shape[0]}: it keeps its fresh random init, the other weights are the file's"]
