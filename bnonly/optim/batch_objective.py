"""The fixed-batch objective the stochastic L-BFGS variants (quasi_newton.py) optimise, and their training step.

A step's batch is a list of pieces (this rank's images of one part of the global batch); `overlap` pairs
need two parts, the half shared with the previous step (head) and the new half (tail). BatchNorm
normalises each piece with its own statistics. Every evaluation is one collective under torchrun (the
flat gradient and the losses, summed in float64), so every rank sees the same numbers and takes the same
step. Cost is counted in images: `images_forward_backward` (a Hessian-vector product counts twice) and
`images_forward_only` (line-search trials).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from bnonly.distributed import World, all_sum_vector, shard
from bnonly.optim.quasi_newton import flat
from bnonly.models.resnet import is_batchnorm


def bn_buffers(model) -> list:
    """Copies of every BatchNorm running statistic (mean, var, num_batches_tracked)."""
    return [b.clone() for m in model.modules() if is_batchnorm(m) for b in m.buffers()]


def restore_bn_buffers(model, saved: list) -> None:
    buffers = [b for m in model.modules() if is_batchnorm(m) for b in m.buffers()]
    for buffer, value in zip(buffers, saved):
        buffer.copy_(value)


def all_finite(tensors) -> bool:
    """True when every element of every tensor is finite (one host sync, however many tensors)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def l2_penalty(params: list, weight_decay: float):
    """0.5 * wd * |theta|^2: its gradient is SGD's coupled weight decay, wd * theta."""
    return 0.5 * weight_decay * sum((p * p).sum() for p in params)


def snapshot(model, params: list) -> tuple:
    """Copies of the trained parameters and of the BN running statistics, for `roll_back`."""
    return [p.detach().clone() for p in params], bn_buffers(model)


def roll_back(model, optimizer, params: list, saved: tuple) -> None:
    """Undo a non-finite L-BFGS step: parameters and BN statistics as `snapshot` saw them, memory cleared."""
    with torch.no_grad():
        for p, value in zip(params, saved[0]):
            p.copy_(value)
    restore_bn_buffers(model, saved[1])
    optimizer.state.clear()


def flat_grad(grads, params: list) -> torch.Tensor:
    """autograd.grad's result as one (n,) vector; a parameter the loss does not use gets zeros."""
    return flat([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])


@dataclasses.dataclass
class Piece:
    """This rank's share of one part of a step's batch."""
    inputs: torch.Tensor  # (n, C, H, W) normalised model input
    labels: torch.Tensor  # (n,) int64
    part: int  # index into BatchObjective.part_sizes


class BatchObjective:
    """Mean cross-entropy over one fixed batch plus 0.5 * wd * |theta|^2 over the decayed parameters, with
    the gradient, part gradients and Hessian-vector products that StochasticLBFGS asks for.

    `part_sizes`: images of each part in the global batch. With `has_head`, part 0 is the head shared with
    the previous step and the last part the tail shared with the next. BN running statistics move in the
    first evaluation only (once per piece); `finish()` puts them back to that point.
    """

    def __init__(self, model, params: list, pieces: list, part_sizes: list, compute, decayed: list,
                 weight_decay: float, label_smoothing: float = 0.0, world: World = World(), has_head: bool = False):
        self.model, self.params, self.pieces, self.part_sizes = model, params, pieces, part_sizes
        self.compute, self.label_smoothing, self.world = compute, label_smoothing, world
        self.has_head, self.total = has_head, sum(part_sizes)
        decayed_ids = {id(p) for p in decayed}
        self.decay_mask = torch.cat([torch.full((p.numel(),), float(id(p) in decayed_ids), device=p.device)
                                     for p in params]) * weight_decay  # (n,) wd where decayed, 0 elsewhere
        self.images_forward_backward = self.images_forward_only = 0
        self.first = None  # {"loss", "correct", "bn"} of the first evaluation

    def _x(self) -> torch.Tensor:
        return flat([p.detach() for p in self.params])

    def _penalty(self, x: torch.Tensor) -> float:
        return 0.5 * float((self.decay_mask * x * x).sum())

    def _forward(self, piece: Piece) -> tuple:
        with self.compute.autocast():
            logits = self.model(piece.inputs)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 autocast -> fp32
        loss = F.cross_entropy(logits, piece.labels, label_smoothing=self.label_smoothing)
        return loss, logits

    def _record_first(self, losses: torch.Tensor, correct: torch.Tensor) -> None:
        """The first evaluation's loss (the whole batch's mean cross-entropy, over all ranks), this rank's
        correct count and the BN statistics it left."""
        if self.first is None:  # later evaluations must not move the running statistics
            cross_entropy = (losses * torch.tensor(self.part_sizes, dtype=losses.dtype, device=losses.device)).sum()
            self.first = {"loss": (cross_entropy / self.total).float(), "correct": correct,
                          "bn": bn_buffers(self.model)}

    def _evaluate(self, with_grad: bool) -> tuple:
        """(per-part mean cross-entropies (parts,), per-part flat gradients (parts, n) or None), summed
        over the ranks in one collective."""
        self.model.train()
        parts, n = len(self.part_sizes), sum(p.numel() for p in self.params)
        losses = torch.zeros(parts, dtype=torch.float64, device=self.params[0].device)
        grads = torch.zeros(parts, n, device=self.params[0].device) if with_grad else None
        correct = torch.zeros((), dtype=torch.int64, device=losses.device)
        for piece in self.pieces:
            weight = len(piece.labels) / self.part_sizes[piece.part]  # this rank's share of the part's mean
            with torch.set_grad_enabled(with_grad):
                loss, logits = self._forward(piece)
            if with_grad:
                grads[piece.part] += flat_grad(torch.autograd.grad(loss * weight, self.params, allow_unused=True),
                                               self.params)
            losses[piece.part] += loss.detach().double() * weight
            correct += (logits.argmax(1) == piece.labels).sum()
        packed = all_sum_vector(self.world, torch.cat([losses, *([grads.double().reshape(-1)] if with_grad else [])]))
        losses = packed[:parts]
        grads = packed[parts:].reshape(parts, n).to(self.params[0].dtype) if with_grad else None
        if with_grad:
            self.images_forward_backward += self.total
        else:
            self.images_forward_only += self.total
        self._record_first(losses, correct)
        return losses, grads

    def _combine(self, losses: torch.Tensor, grads=None) -> tuple:
        """The whole batch's objective (and gradient) from the parts' means."""
        x = self._x()
        weights = torch.tensor(self.part_sizes, dtype=torch.float64, device=losses.device) / self.total
        loss = float((losses * weights).sum()) + self._penalty(x)
        if grads is None:
            return loss, None
        return loss, (weights.to(grads.dtype)[:, None] * grads).sum(0) + self.decay_mask * x

    def gradient(self) -> tuple:
        """(loss, flat gradient) at the current parameters: one forward+backward pass."""
        return self._combine(*self._evaluate(True))

    def loss(self) -> float:
        """The loss at the current parameters: one forward pass, no gradient."""
        with torch.no_grad():
            return self._combine(self._evaluate(False)[0])[0]

    def part_gradients(self) -> tuple:
        """(loss, gradient, head gradient or None, tail gradient); a part's gradient is that of its own
        mean cross-entropy plus the L2 term."""
        losses, grads = self._evaluate(True)
        loss, grad = self._combine(losses, grads)
        l2 = self.decay_mask * self._x()
        return loss, grad, grads[0] + l2 if self.has_head else None, grads[-1] + l2

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """Hessian of the whole batch's objective times `vector`, by double backward (counted as two
        forward+backward passes)."""
        self.model.train()
        product = torch.zeros_like(vector)
        for piece in self.pieces:
            loss = self._forward(piece)[0] * (len(piece.labels) / self.total)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            directional = (flat_grad(grads, self.params) * vector).sum()
            product += flat_grad(torch.autograd.grad(directional, self.params, allow_unused=True), self.params)
        self.images_forward_backward += 2 * self.total
        return all_sum_vector(self.world, product.double()).to(vector.dtype) + self.decay_mask * vector

    def finish(self) -> None:
        """Put the BN running statistics back to where the first evaluation left them."""
        if self.first is not None:
            restore_bn_buffers(self.model, self.first["bn"])


def quasi_newton_step(model, optimizer, objective: BatchObjective) -> dict:
    """One StochasticLBFGS step on `objective`'s batch. A step whose first loss or result is not finite is
    rolled back: parameters and BN statistics return to where they were, the optimizer's memory is
    cleared, and the result says `rolled_back`. `model` is the plain module (not DDP: the objective sums
    the gradients over the ranks itself)."""
    params = objective.params
    before = snapshot(model, params)
    loss = optimizer.step(objective)
    objective.finish()
    first = objective.first
    result = {"loss": first["loss"], "correct": first["correct"],
              "images": sum(len(piece.labels) for piece in objective.pieces),
              "images_forward_backward": objective.images_forward_backward,
              "images_forward_only": objective.images_forward_only, "rolled_back": False}
    result["passes"] = round(objective.images_forward_backward / objective.total)
    if math.isfinite(loss) and all_finite([first["loss"], *params]):
        return result
    roll_back(model, optimizer, params, before)
    return {**result, "rolled_back": True}


def lbfgs_chunks(batch: int, world: World, chunk_size: int) -> int:
    """Into how many pieces each rank cuts its part of a `batch`-image L-BFGS batch: about `chunk_size`
    images each, and the same number on every rank, whose collectives must pair up (1: no chunks)."""
    if not chunk_size:
        return 1
    return max(1, math.ceil((batch // world.size) / chunk_size))


def batch_objective(model, optimizer, cfg, batch: tuple, pipeline, generator, compute, decayed: list,
                    world: World, progress: dict, poison: bool = False) -> BatchObjective:
    """The objective of one stochastic L-BFGS step on a global batch (images or waves, and labels): augmented
    as a whole (every rank draws the same numbers), each part split over the ranks and into
    --lbfgs-chunk-size pieces. The multibatch variant's batch is the previous step's new half (kept in
    `progress`, so a mid-epoch checkpoint holds it; an epoch's first step has none) and this one's."""
    parts = [(pipeline.augment(batch[0], generator), batch[1])]
    if cfg.lbfgs_variant == "multibatch":  # two plain tensors, so a resumed run moves them to its device
        if progress.get("overlap_images") is not None:
            parts.insert(0, (progress["overlap_images"], progress["overlap_labels"]))
        progress["overlap_images"], progress["overlap_labels"] = parts[-1]
    pieces = []
    for number, (part_images, part_labels) in enumerate(parts):
        mine = shard(len(part_labels), world)
        x, y = compute.inputs(part_images[mine], pipeline), part_labels[mine]
        if poison:
            x = x * float("nan")
        chunks = lbfgs_chunks(len(part_labels), world, cfg.lbfgs_chunk_size)
        pieces += [Piece(xc, yc, number) for xc, yc in zip(x.tensor_split(chunks), y.tensor_split(chunks)) if len(yc)]
    plain = getattr(model, "module", model)  # not DDP: the objective sums the gradients over the ranks itself
    return BatchObjective(plain, optimizer.param_groups[0]["params"], pieces, [len(p[1]) for p in parts], compute,
                          decayed, cfg.weight_decay, cfg.label_smoothing, world, has_head=len(parts) == 2)
