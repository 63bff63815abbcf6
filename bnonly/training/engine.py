"""One epoch of training (SGD or L-BFGS) and evaluation; the optimizer and schedule factories are in
bnonly/optim/factories.py."""

import contextlib
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bnonly.optim.batch_objective import (all_finite, batch_objective, bn_buffers, l2_penalty, lbfgs_chunks,
                                          quasi_newton_step, restore_bn_buffers, roll_back, snapshot)
from bnonly.training.compute import Compute
from bnonly.training.ngd_step import ngd_step
from bnonly.data.datasets import as_split, epoch_order, fixed_subset_index
from bnonly.distributed import World, all_sum, average_bn_statistics, shard
from bnonly.optim.factories import split_decay


def lbfgs_step(model, optimizer, images, labels, weight_decay: float, compute: Compute, decayed=None,
               chunks: int = 1, label_smoothing: float = 0.0, world: World = World(), share: float = 1.0) -> dict:
    """One L-BFGS step on a fixed batch; BN running statistics move only in the first pass (once per piece).

    The loss is the batch's mean cross-entropy plus 0.5 * wd * |theta|^2 over `decayed` (default: every
    trained parameter). With `chunks` > 1, each evaluation runs the batch in that many pieces and sums
    their gradients, so the batch may be larger than fits in memory at once; BatchNorm then normalises
    each piece with its own statistics. A pass is one evaluation of the whole batch.
    Under torchrun (`world`), `images` are this rank's part of the global batch and `share` its weight
    (see sgd_step); DDP averages the gradients and the loss the line search sees is the global batch's,
    so every rank takes the same step.
    The reported loss is the cross-entropy of the first pass (without the L2 term), as SGD reports it.
    A step whose loss or result is not finite is rolled back: parameters and BN statistics return to
    where they were, the curvature memory is cleared, and the result says `rolled_back`.
    """
    params = optimizer.param_groups[0]["params"]
    decayed = params if decayed is None else decayed
    before = snapshot(model, params)
    pieces = list(zip(images.tensor_split(chunks), labels.tensor_split(chunks)))
    first = {}
    passes = 0

    def closure():
        nonlocal passes
        optimizer.zero_grad(set_to_none=True)
        cross_entropy, correct = 0.0, 0
        for number, (x, y) in enumerate(pieces):
            sync = number == len(pieces) - 1 or not hasattr(model, "no_sync")  # DDP: all-reduce after the last
            with contextlib.nullcontext() if sync else model.no_sync():
                with compute.autocast():
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing) * (share * len(y) / len(labels))
                loss.backward()
            cross_entropy += loss.detach()
            correct += (logits.argmax(1) == y).sum()
        if world.active:  # the ranks' weighted terms add up to world.size x the global mean
            cross_entropy = all_sum(world, cross_entropy)[0] / world.size
        penalty = l2_penalty(decayed, weight_decay) if decayed and weight_decay else None
        if penalty is not None:
            penalty.backward()
        passes += 1
        if not first:  # the line search calls again; those calls must not move the running statistics
            first.update(loss=cross_entropy, correct=correct, bn=bn_buffers(model))
        return cross_entropy + (penalty.detach() if penalty is not None else 0.0)

    optimizer.step(closure)
    restore_bn_buffers(model, first["bn"])
    if all_finite([first["loss"], *params]):
        return {"loss": first["loss"], "correct": first["correct"], "passes": passes, "rolled_back": False}
    roll_back(model, optimizer, params, before)
    return {"loss": first["loss"], "correct": first["correct"], "passes": passes, "rolled_back": True}


def sgd_step(model, optimizer, images, labels, compute: Compute, scaler=None, label_smoothing: float = 0.0,
             share: float = 1.0) -> dict:
    """One forward/backward/step; with no optimizer only the forward pass (BN statistics still move).

    `share`: under torchrun, (this rank's images x ranks) / global batch; the loss is weighted by it so
    that DDP's average over the ranks is the global batch's mean gradient (1 for equal parts).
    """
    with torch.set_grad_enabled(optimizer is not None), compute.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        weighted = loss if share == 1.0 else loss * share
        if scaler is None:
            weighted.backward()
            optimizer.step()
        else:
            scaler.scale(weighted).backward()
            scaler.step(optimizer)
            scaler.update()
    return {"loss": loss.detach(), "correct": (logits.argmax(1) == labels).sum(), "passes": 1, "rolled_back": False}


MAX_ROLLBACKS = 5  # consecutive L-BFGS rollbacks after which training gives up


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite and cannot be recovered from."""


def start_epoch(n: int, generator: torch.Generator) -> dict:
    """Where an epoch stands: its image order and the sums so far. Plain data: mid-epoch checkpoints save it."""
    zero = torch.zeros((), device=generator.device)
    return {"order": epoch_order(n, generator), "step": 0, "loss_sum": zero.double(), "correct": zero.long(),
            "images": 0, "passes": 0, "rollbacks": 0, "consecutive_rollbacks": 0, "seconds": 0.0,
            "images_forward_backward": 0, "images_forward_only": 0}


def train_one_epoch(model, optimizer, cfg, train_split, pipeline, generator, epoch: int, compute: Compute,
                    scaler=None, progress=None, after_step=None, no_decay=(), world: World = World()) -> dict:
    """Train on every image once, in a seeded order with batched augmentation; returns the epoch's means.

    `progress` (from start_epoch, or a mid-epoch checkpoint) is updated after every step, then
    `after_step(progress)` is called: it may save it or stop the run. `no_decay`: trained parameters that
    L-BFGS leaves out of its L2 term (the other optimizers hold that in their groups). Nothing in the loop
    waits for the device, except L-BFGS's own line search: losses and counts are summed on it and read at the end.
    Under torchrun every rank draws the same order and augmentation for each global batch of
    world.size x -b images and trains on its own slice; the epoch's means are over all ranks, and
    `progress` holds this rank's sums.
    """
    train_split = as_split(train_split)  # a MemorySplit or a StreamedSplit: batches come from its `batches`
    n = len(train_split.labels)
    progress = progress or start_epoch(n, generator)
    for counter in ("images_forward_backward", "images_forward_only"):  # absent from older checkpoints
        progress.setdefault(counter, 0)
    lbfgs = cfg.optimizer == "lbfgs" and optimizer is not None
    quasi_newton = lbfgs and cfg.lbfgs_variant != "torch"
    batches = progress["order"].split(step_images(cfg, lbfgs) * world.size)
    steps = [s for s in range(progress["step"], len(batches)) if len(batches[s]) >= world.size]  # a last global
    # batch too small to give every rank an image is skipped
    source = train_split.batches([batches[s] for s in steps], epoch, world)
    inject_nan = injected_nan_steps(epoch)
    if lbfgs:
        decayed = split_decay(optimizer.param_groups[0]["params"], no_decay)[0]
    model.train()
    bar = tqdm(total=n, initial=progress["images"], unit="img", unit_scale=True, leave=False,
               desc=f"epoch {epoch}", disable=cfg.no_progress, dynamic_ncols=True)
    for step in steps:
        start = time.perf_counter()
        index = batches[step]
        batch_images, batch_labels, part = next(source)  # (B, 3, H, W) uint8 images or (B, L) int16 waves, (B,)
        if quasi_newton:
            if cfg.lbfgs_history_mode == "reset":  # each batch starts with an empty memory
                optimizer.forget_pairs()
            objective = batch_objective(model, optimizer, cfg, (batch_images, batch_labels), pipeline, generator,
                                        compute, decayed, world, progress, poison=step + 1 in inject_nan)
            result = quasi_newton_step(objective.model, optimizer, objective)
        else:
            # an in-memory batch is augmented whole so every rank draws the same numbers, then sliced (`part`)
            x = compute.inputs(pipeline.augment(batch_images, generator)[part], pipeline)
            if step + 1 in inject_nan:
                x = x * float("nan")
            y = batch_labels[part]
            share = len(y) * world.size / len(index)
            if lbfgs:
                if cfg.lbfgs_history_mode == "reset":  # each batch is a new problem: forget the curvature pairs
                    optimizer.state.clear()
                result = lbfgs_step(model, optimizer, x, y, cfg.weight_decay, compute, decayed,
                                    lbfgs_chunks(len(index), world, cfg.lbfgs_chunk_size), cfg.label_smoothing,
                                    world, share)
            elif cfg.optimizer == "ngd" and optimizer is not None:
                result = ngd_step(model, optimizer, x, y, compute, cfg.ngd_fisher, generator, cfg.label_smoothing,
                                  share)
            else:
                result = sgd_step(model, optimizer, x, y, compute, scaler, cfg.label_smoothing, share)
            counter = "images_forward_backward" if optimizer is not None else "images_forward_only"
            result.update({"images": len(y), counter: result["passes"] * len(index)})
        record_step(progress, result, epoch, step)
        progress["seconds"] += time.perf_counter() - start
        bar.update(len(index))  # the job's images (the bar is rank 0's)
        if cfg.print_freq and (step + 1) % cfg.print_freq == 0 and world.main:
            bar.write(f"  epoch {epoch} batch {step + 1}: loss {result['loss'].item():.4f}")
        if after_step is not None:
            after_step(progress)
    bar.close()
    progress["step"] = len(batches)
    loss_sum, correct, images_seen = job_sums(progress, world)
    seen = max(images_seen, 1)
    return {"loss": loss_sum.item() / seen, "acc": 100.0 * correct.item() / seen,
            "passes": progress["passes"], "rollbacks": progress["rollbacks"],
            "images_forward_backward": progress["images_forward_backward"],
            "images_forward_only": progress["images_forward_only"],
            "images_per_second": n / max(progress["seconds"], 1e-9)}


def step_images(cfg, lbfgs: bool) -> int:
    """New images each optimizer step takes from the epoch's order, per process: -b, the L-BFGS batch,
    or half of it for the multibatch variant, whose other half is the previous step's."""
    if not lbfgs:
        return cfg.batch_size
    return cfg.lbfgs_batch_size // (2 if cfg.lbfgs_variant == "multibatch" else 1)


def record_step(progress: dict, result: dict, epoch: int, step: int) -> None:
    """Add a step's result to the epoch's sums; too many rollbacks in a row end the run."""
    progress["passes"] += result["passes"]
    progress["images_forward_backward"] += result.get("images_forward_backward", 0)
    progress["images_forward_only"] += result.get("images_forward_only", 0)
    if result["rolled_back"]:
        progress["rollbacks"] += 1
        progress["consecutive_rollbacks"] += 1
        if progress["consecutive_rollbacks"] >= MAX_ROLLBACKS:
            raise TrainingDiverged(f"L-BFGS gave up after {MAX_ROLLBACKS} consecutive steps with a non-finite "
                                   f"loss (epoch {epoch}, batch {step + 1})")
    else:
        progress["consecutive_rollbacks"] = 0
        progress["loss_sum"] += result["loss"].double() * result["images"]
        progress["correct"] += result["correct"]
        progress["images"] += result["images"]
    progress["step"] = step + 1


def job_sums(progress: dict, world: World) -> tuple:
    """(loss sum, correct count, images) of an epoch so far, over all ranks (this process's alone without
    torchrun)."""
    loss_sum, correct, images = all_sum(world, progress["loss_sum"], progress["correct"],
                                        torch.tensor(progress["images"], device=progress["correct"].device))
    return loss_sum, correct, int(images)


def injected_nan_steps(epoch: int) -> set:
    """Test hook: BN_ONLY_INJECT_NAN="EPOCH:STEP,..." makes those training batches NaN (steps count from 1)."""
    spec = os.environ.get("BN_ONLY_INJECT_NAN", "")
    pairs = (item.split(":") for item in spec.split(",") if item)
    return {int(step) for e, step in pairs if int(e) == epoch}


@torch.no_grad()
def recalibrate_bn(model, images: torch.Tensor, pipeline, count: int, compute: Compute, batch_size: int = 512) -> None:
    """Reset BN running statistics to the plain average over `count` fixed training images (train mode).

    The images are the first `count` of a fixed permutation, un-augmented, so the result is the same
    whenever it is computed and consumes no random numbers of the run.
    """
    order = fixed_subset_index(len(images), count).to(images.device)
    batches = (compute.inputs(images[order[s:s + batch_size]], pipeline) for s in range(0, len(order), batch_size))
    with compute.autocast():
        torch.optim.swa_utils.update_bn(batches, model)


@contextlib.contextmanager
def adapted_bn(model, inputs: torch.Tensor, pipeline, compute: Compute, world: World = World(),
               batch_size: int = 1024):
    """--bn-adapt: for the duration, BN running statistics are recomputed on a held-out split's own
    (un-augmented) inputs, as AdaBN (Li et al. 2016) adapts a model to new data; the model's own come back
    afterwards. A split of at most `batch_size` goes through in one batch, so they are exactly its
    statistics; a larger one in equal batches of a fixed permutation (splits are often sorted by class),
    whose statistics are averaged. Under torchrun each rank takes its part of that permutation in as many
    batches as every other rank (so --sync-bn's layers meet), and the ranks' statistics are averaged."""
    saved = bn_buffers(model)
    try:
        order = fixed_subset_index(len(inputs), len(inputs)).to(inputs.device)
        mine = inputs[order[shard(len(inputs), world)]]
        count = max(1, math.ceil(math.ceil(len(inputs) / world.size) / batch_size))
        batches = (compute.inputs(part, pipeline) for part in mine.tensor_split(count))
        with torch.no_grad(), compute.autocast():
            torch.optim.swa_utils.update_bn(batches, model)
        average_bn_statistics(model, world)
        yield
    finally:
        restore_bn_buffers(model, saved)


def evaluate_adapted(model, split, pipeline, compute: Compute, world: World = World()) -> dict:
    """`evaluate` with BN statistics recomputed on the split's own inputs (--bn-adapt; see adapted_bn)."""
    with adapted_bn(model, split[0], pipeline, compute, world):
        return evaluate(model, split, pipeline, compute, world=world)


@torch.inference_mode()
def evaluate(model, split, pipeline, compute: Compute, batch_size: int = 256, world: World = World()) -> dict:
    """Mean cross-entropy, accuracy and top-5 accuracy (%) over a whole split, in eval mode; under torchrun
    each rank evaluates its own slice and the sums are added up, so every image counts once. With fewer
    than 5 classes every label is among the top 5: top-5 accuracy is 100 %.

    Batches of 256 were the fastest on a 2-core CPU (fp32 and bf16; 1,024 was 25-30 % slower).
    """
    split = as_split(split)
    n = len(split.labels)
    mine = torch.arange(n, device=split.labels.device)[shard(n, world)]
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    correct5 = torch.zeros_like(correct)
    for images, labels, _ in split.batches(list(mine.split(batch_size)), 0, World()):  # this rank's part only
        with compute.autocast():
            logits = model(compute.inputs(images, pipeline))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5) class indices
        correct5 += (top5 == labels[:, None]).any(dim=1).sum()
    loss_sum, correct, correct5 = all_sum(world, loss_sum, correct, correct5)
    return {"loss": loss_sum.item() / n, "acc": 100.0 * correct.item() / n, "acc5": 100.0 * correct5.item() / n}
