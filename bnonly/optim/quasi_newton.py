"""Stochastic L-BFGS for small trainable sets (BN-only ResNet-32: 2,272 parameters).

torch.optim.LBFGS forms each curvature pair from the gradients of two different batches when it runs on
mini-batches, and that noise drives its inverse-Hessian scale towards zero (docs/results.md, L-BFGS variants).
Here every pair (s, y) measures the curvature of one fixed set of images, from one of three sources:

- `same-batch` (the stochastic "batch mode" of Yatawatta et al., written here from its description):
  within a step, a second iteration on the same batch gives y = g(x + s) - g(x); the first iteration on a
  new batch stores nothing. Its armijo line search starts from lr scaled by the gradient's
  signal-to-noise ratio across batches (`variance_scaling`, see `step_scale`).
- `overlap` (multi-batch L-BFGS, Berahas, Nocedal & Takac 2016): consecutive batches share half their
  images, and y is the difference of the shared half's gradients at the two points. The objective
  supplies those gradients from the step's own evaluation, so a pair costs no extra pass.
- `hvp`: y = H s, a Hessian-vector product of the step's batch along the last step s (double backward),
  the exact curvature the secant pair approximates (SQN, Byrd et al. 2016, forms such pairs every few
  steps on a subsample; with 2,272 parameters one per step is affordable).

All of them share `two_loop` and line_search.backtracking. A pair is stored only when its measured
y.s > CURVATURE_EPS x |s|^2, and then gets `damping` x s added to y (the batch mode adds 1e-6 x s; larger
values bound the inverse Hessian by 1/damping, as a Levenberg-Marquardt term would: multibatch's 0.05
keeps the rare pairs of near-zero curvature from making steps 100x the usual, docs/results.md). With `momentum` b > 0 the
recursion is applied to a running average of the gradients, m <- b m + (1 - b) g, instead of the
batch's own (an idea of ours: the noise of one batch's gradient is what a quasi-Newton step amplifies).

The optimizer has torch's interface: `step(objective)` and a state_dict of tensors and numbers, so
checkpoints load with weights_only. `objective` is a plain closure (zero_grad, loss, backward, return
loss: enough for `same-batch`) or an object with the methods below (batch_objective.BatchObjective):
  gradient() -> (loss float, flat gradient)                 one forward+backward pass
  loss() -> float                                           one forward pass, no gradient
  part_gradients() -> (loss, gradient, head or None, tail)  `overlap`: also the gradients of the part
                                                            shared with the previous batch and the next
  hvp(v) -> flat H v                                        `hvp`
"""

import math

import torch

from bnonly.optim.line_search import backtracking

PAIR_SOURCES = ("same-batch", "overlap", "hvp")
LINE_SEARCHES = ("armijo", "none")
DAMPING = 1e-6  # default y += damping * s (the batch mode's): bounds the inverse Hessian by 1e6 only
CURVATURE_EPS = 1e-10  # a pair is stored only when y.s > CURVATURE_EPS * |s|^2


def flat(tensors) -> torch.Tensor:
    """The tensors as one (n,) vector, in order."""
    return torch.cat([t.reshape(-1) for t in tensors])


def two_loop(grad: torch.Tensor, s: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """H @ grad for the L-BFGS inverse Hessian built on gamma * I from the pairs s, y ((m, n), oldest
    first), by the two-loop recursion; computed in float64 (float32 on MPS, which has none)."""
    dtype = torch.float32 if grad.device.type == "mps" else torch.float64
    q, s, y = grad.to(dtype), s.to(dtype), y.to(dtype)
    rho = 1.0 / (s * y).sum(1)
    alpha = [None] * len(s)
    for i in range(len(s) - 1, -1, -1):
        alpha[i] = rho[i] * (s[i] @ q)
        q = q - alpha[i] * y[i]
    r = q * gamma
    for i in range(len(s)):
        beta = rho[i] * (y[i] @ r)
        r = r + s[i] * (alpha[i] - beta)
    return r.to(grad.dtype)


class ClosureObjective:
    """A plain torch closure seen as an objective: gradient() and loss() (the latter also runs the
    closure's backward pass, whose gradient it ignores)."""

    def __init__(self, closure, params: list):
        self.closure, self.params = closure, params

    def gradient(self) -> tuple:
        with torch.enable_grad():
            loss = float(torch.as_tensor(self.closure()).detach())
        return loss, flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])

    def loss(self) -> float:
        with torch.enable_grad():
            return float(torch.as_tensor(self.closure()).detach())


class StochasticLBFGS(torch.optim.Optimizer):
    """L-BFGS whose curvature pairs never mix two batches (module docstring); one parameter group.

    lr: the step along the L-BFGS direction (the first trial step with the armijo search); pairs: one of
    PAIR_SOURCES; max_iter: iterations per batch (same-batch pairs need 2 or more); line_search: armijo
    (backtracking on the batch's loss, forward passes only) or none (fixed steps of lr); variance_scaling:
    scale each step by the gradients' signal-to-noise ratio across batches (step_scale); damping and
    momentum: see the module docstring (momentum needs line_search none: the averaged direction need not
    descend on the batch the search measures).
    """

    def __init__(self, params, lr: float = 1.0, history_size: int = 10, pairs: str = "same-batch",
                 max_iter: int = 2, line_search: str = "armijo", damping: float = DAMPING, momentum: float = 0.0,
                 variance_scaling: bool = False):
        if pairs not in PAIR_SOURCES:
            raise ValueError(f"unknown curvature pairs: {pairs}")
        if line_search not in LINE_SEARCHES:
            raise ValueError(f"unknown line search: {line_search}")
        if momentum and line_search != "none":
            raise ValueError("momentum needs line_search none")
        super().__init__(params, dict(lr=lr, history_size=history_size, pairs=pairs, max_iter=max_iter,
                                      line_search=line_search, damping=damping, momentum=momentum,
                                      variance_scaling=variance_scaling))
        if len(self.param_groups) != 1:
            raise ValueError("StochasticLBFGS takes one parameter group")
        self._params = self.param_groups[0]["params"]

    def _state(self) -> dict:
        """The optimizer's one state dict (kept under the first parameter, as torch's LBFGS does)."""
        state = self.state[self._params[0]]
        if "s" not in state:
            n = sum(p.numel() for p in self._params)
            empty = self._params[0].new_zeros(0, n)
            state.update(s=empty, y=empty.clone(), steps=0, batches=0,
                         grad_mean=self._params[0].new_zeros(n), grad_m2=self._params[0].new_zeros(n))
        return state

    def _set(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self._params:
                p.copy_(x[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def remember(self, state: dict, s: torch.Tensor, y: torch.Tensor) -> bool:
        """Store the pair (s, y + damping s) when it passes the curvature test; drop the oldest past the
        history size. Returns whether it was stored. The test is on the measured pair, before the damping:
        damping a pair of negative curvature would make its y.s a small positive number, and its inverse
        Hessian along s unbounded."""
        ys, ss = float(y @ s), float(s @ s)
        if not (math.isfinite(ys) and ys > CURVATURE_EPS * ss and ss > 0):
            return False
        y = y + self.param_groups[0]["damping"] * s
        start = max(0, len(state["s"]) + 1 - self.param_groups[0]["history_size"])  # the oldest kept
        state["s"] = torch.cat([state["s"][start:], s[None]])
        state["y"] = torch.cat([state["y"][start:], y[None]])
        return True

    def forget_pairs(self) -> None:
        """Empty the curvature memory (--lbfgs-history-mode reset), keeping the gradient statistics."""
        state = self._state()
        state["s"], state["y"] = state["s"][:0], state["y"][:0]

    @staticmethod
    def gamma(state: dict) -> float:
        """The initial inverse-Hessian scale s.y / y.y of the newest pair (1 with no pairs)."""
        if not len(state["s"]):
            return 1.0
        s, y = state["s"][-1].double(), state["y"][-1].double()
        return float((s @ y) / (y @ y))

    @staticmethod
    def track(state: dict, grad: torch.Tensor) -> None:
        """Welford's running mean and sum of squared deviations of the batches' first gradients."""
        state["batches"] += 1
        delta = grad - state["grad_mean"]
        state["grad_mean"] = state["grad_mean"] + delta / state["batches"]
        state["grad_m2"] = state["grad_m2"] + delta * (grad - state["grad_mean"])

    @staticmethod
    def step_scale(state: dict) -> float:
        """|mean|^2 / (|mean|^2 + trace of the covariance) of the gradients across batches: near 1 while
        the batches agree, small when noise dominates (1 before two batches). The batch mode's own
        formula divides the variance by |g| instead; this ratio has no units."""
        if state["batches"] < 2:
            return 1.0
        signal = float(state["grad_mean"].double().square().sum())
        noise = float(state["grad_m2"].double().sum()) / (state["batches"] - 1)
        return signal / (signal + noise) if signal + noise > 0 else 1.0

    def step(self, objective):
        """One optimizer step on the objective's batch; returns the loss at the starting point."""
        if not hasattr(objective, "gradient"):
            objective = ClosureObjective(objective, self._params)
        group, state = self.param_groups[0], self._state()
        x = flat([p.detach() for p in self._params]).clone()
        head = tail = None
        if group["pairs"] == "overlap":
            loss, grad, head, tail = objective.part_gradients()
        else:
            loss, grad = objective.gradient()
        first_loss = loss
        if not (math.isfinite(loss) and bool(torch.isfinite(grad).all())):
            return math.nan  # no step; the caller rolls back (and clears this state)
        self.track(state, grad)
        if group["pairs"] == "overlap" and head is not None and "prev_tail" in state:
            self.remember(state, x - state["prev_x"], head - state["prev_tail"])
        elif group["pairs"] == "hvp" and "prev_x" in state and bool((x != state["prev_x"]).any()):
            s = x - state["prev_x"]
            self.remember(state, s, objective.hvp(s))
        state["prev_x"] = x.clone()
        if tail is not None:
            state["prev_tail"] = tail
        for iteration in range(group["max_iter"]):
            if iteration:  # same batch, new point: a consistent curvature pair
                loss, new_grad = objective.gradient()
                if not (math.isfinite(loss) and bool(torch.isfinite(new_grad).all())):
                    break
                self.remember(state, x - previous, new_grad - grad)
                grad = new_grad
            target = grad
            if group["momentum"]:
                average = state.get("average", grad)
                target = group["momentum"] * average + (1 - group["momentum"]) * grad
            direction = -two_loop(target, state["s"], state["y"], self.gamma(state))
            slope = float(target @ direction)
            if not slope < 0:  # not a descent direction (a stale memory): fall back to the gradient
                direction, slope = -target, -float(target @ target)
            step = group["lr"] * self.first_step(state, grad, group["variance_scaling"])
            if group["line_search"] == "armijo":
                step = backtracking(lambda t: self._loss_at(objective, x, direction, t), loss, slope, step)[0]
            previous, x = x, x + step * direction
            self._set(x)
            state["steps"] += 1
            if step == 0.0:
                break
        if group["momentum"]:
            state["average"] = target
        return first_loss

    def first_step(self, state: dict, grad: torch.Tensor, variance_scaling: bool) -> float:
        """The step (the line search's first trial) as a fraction of lr: with an empty memory
        min(1, 1/|g|_1) (torch's LBFGS too), times the signal-to-noise ratio with variance_scaling."""
        scale = min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-12)) if not len(state["s"]) else 1.0
        return scale * (self.step_scale(state) if variance_scaling else 1.0)

    def _loss_at(self, objective, x: torch.Tensor, direction: torch.Tensor, t: float) -> float:
        self._set(x + t * direction)
        return objective.loss()
