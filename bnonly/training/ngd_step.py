"""One step of --optimizer ngd (optim/natural_gradient.py): the forward pass, the backward that gives
the per-sample gradients of the Fisher, the batch gradient, and the closure by which the optimizer
measures what a step achieved on its batch."""

import torch
import torch.nn.functional as F

from bnonly.optim.batch_objective import bn_buffers, restore_bn_buffers
from bnonly.training.compute import Compute


def ngd_step(model, optimizer, images, labels, compute: Compute, fisher: str = "empirical",
             generator: torch.Generator = None, label_smoothing: float = 0.0, share: float = 1.0) -> dict:
    """Forward, backward(s) and an ngd step on one batch; returns what sgd_step does.

    fisher "empirical": the per-sample gradients are those of the batch's own labels, taken from the one
    backward pass. "sampled": first a backward pass of labels drawn (with `generator`) from the model's
    predictions gives them, as the Fisher of the model's own distribution asks; then the ordinary one.
    `share` weights the loss under torchrun as in sgd_step. The closure evaluates the batch's loss at the
    new parameters in training mode, as the step's own loss was, without moving BN's running statistics.
    """
    with compute.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    weighted = loss if share == 1.0 else loss * share
    if fisher == "sampled":
        with torch.no_grad():
            drawn = torch.multinomial(logits.detach().float().softmax(1), 1, generator=generator).squeeze(1)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with optimizer.collecting():
            torch.autograd.grad(F.cross_entropy(logits.float(), drawn) * share, params, retain_graph=True)
        weighted.backward()
    else:
        with optimizer.collecting():
            weighted.backward()

    def closure():
        saved = bn_buffers(model)
        with torch.no_grad(), compute.autocast():
            after = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
        restore_bn_buffers(model, saved)
        return after

    optimizer.step(closure, loss=loss.detach())
    return {"loss": loss.detach(), "correct": (logits.argmax(1) == labels).sum(), "passes": 1, "rolled_back": False}
