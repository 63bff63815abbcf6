"""Natural-gradient descent over BatchNorm's γ and β (--optimizer ngd).

BN-only ResNet-32 trains 2,272 numbers, few enough to hold their curvature as a matrix and factor it.
This optimizer keeps an exponential moving average of the Fisher matrix of those parameters, built
from per-sample gradients that the ordinary backward pass already holds, and steps along

    d = m^p (F + λ m I)^(-p) g   (m = trace(F) / size; p = 1: natural gradient; p = 1/2: full-matrix RMSprop)

with momentum on d. λ (Levenberg–Marquardt damping) adapts to the ratio of the loss reduction a step
achieved on its own batch to the reduction the quadratic model 0.5 sᵀFs + gᵀs predicted.

Per-sample gradients: for a BatchNorm layer y = γ x̂ + β, sample n's part of the batch gradient is
Σ_hw x̂[n]·∂L/∂y[n] for γ and Σ_hw ∂L/∂y[n] for β. A forward hook on each layer keeps its input (which
autograd keeps anyway) and puts a hook on its output; during a backward inside `collecting()` that hook
forms the (N, C, 2) per-sample gradients from the input's batch statistics and the output's gradient. The Fisher is then
empirical (the backward of the batch's own labels) or sampled (a backward of labels drawn from the
model's own predictions, which the engine runs first; see training/ngd_step.py).

Curvature blocks: one matrix over every parameter ("full"), one per layer ("layer"), or a 2 x 2 (γ, β)
matrix per channel ("channel"); "auto" takes the finest block that is not larger than MAX_BLOCK
parameters, so a torchvision ResNet-50 (53,120 BN parameters) gets per-layer blocks.

All state is tensors in `state` (the first parameter's entry), so checkpoints load with weights_only and
a resumed run continues bit for bit. Under torchrun every rank adds the same averaged batch Fisher (one
all-reduce per step) and gets DDP's averaged gradient, so the ranks stay identical.
"""

import contextlib

import torch
import torch.distributed as dist

from bnonly.distributed import World, collective_device

BLOCKS = ("auto", "full", "layer", "channel")
MAX_BLOCK = 4096  # parameters in one curvature matrix under "auto": 64 MiB in fp32 (twice: average, factor)
DAMPING_RANGE = (1e-8, 1e4)  # of λ, relative to the Fisher's mean eigenvalue
DAMPING_FACTOR = 1.5  # λ is divided by it after a good step (ρ > 3/4), multiplied after a poor one (ρ < 1/4)


def per_sample_gradients(x: torch.Tensor, grad_output: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, C, 2) per-sample (γ, β) gradients of a training-mode BatchNorm layer from its input and the
    gradient at its output; their sum over N is the layer's batch gradient. x̂ is not formed:
    Σ_hw x̂·g = (Σ_hw x·g - μ Σ_hw g) / sqrt(σ² + eps), with μ and 1 / sqrt(σ² + eps) from BatchNorm's own
    kernel (on a 2-core CPU 6x faster than torch.var_mean over a channels-last batch)."""
    x, g = x.float(), grad_output.float()
    dims = tuple(range(2, x.dim()))
    _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)  # (C,) each
    beta = g.sum(dims) if dims else g
    products = (x * g).sum(dims) if dims else x * g
    gamma = (products - mean * beta) * invstd
    return torch.stack((gamma, beta), dim=2)


def choose_blocks(channels: list, blocks: str) -> str:
    """The block structure "auto" stands for, given each layer's channel count."""
    if blocks != "auto":
        return blocks
    if 2 * sum(channels) <= MAX_BLOCK:
        return "full"
    return "layer" if 2 * max(channels) <= MAX_BLOCK else "channel"


class NaturalGradient(torch.optim.Optimizer):
    """Damped natural-gradient steps on the γ and β of `modules` (BatchNorm layers, each with both trained).

    lr: step size; momentum: heavy-ball coefficient on the preconditioned step; weight_decay: added to
    the gradient (per parameter group, as SGD does); damping: the initial λ; ema: the Fisher average's
    decay per step; refresh: steps between factorisations, at which λ also adapts (when the engine passes
    a closure); power: 1 (natural gradient) or 0.5 (inverse square root); blocks: see BLOCKS.
    These defaults are the natural gradient's; train.py's (power 0.5, refresh 50, lr 1.6) follow the screens.
    """

    def __init__(self, params, modules, lr=1.0, momentum=0.9, weight_decay=0.0, damping=1.0, ema=0.95,
                 refresh=10, power=1.0, blocks="auto", world: World = World()):
        if blocks not in BLOCKS:
            raise ValueError(f"unknown curvature blocks: {blocks}")
        if not 0.0 <= ema < 1.0 or refresh < 1 or damping <= 0 or power <= 0:
            raise ValueError("ngd needs 0 <= ema < 1, refresh >= 1, damping > 0 and power > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.modules = list(modules)
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        wanted = {id(p) for m in self.modules for p in (m.weight, m.bias)}
        if not self.modules or mine != wanted:
            raise ValueError("ngd trains the weight and bias of BatchNorm layers and nothing else")
        self.options = {"damping": damping, "ema": ema, "refresh": refresh, "power": power}
        self.blocks = choose_blocks([m.num_features for m in self.modules], blocks)
        self.world = world
        self.size = 2 * sum(m.num_features for m in self.modules)
        self._samples = {}
        self._collect = False
        self.last = {}  # the latest step's diagnostics (see scripts/ngd_step_log.py)
        self._hooks = [m.register_forward_hook(self._forward_hook) for m in self.modules]

    # --- per-sample gradients -------------------------------------------------------------------------

    def _forward_hook(self, module, inputs, output):
        if not (module.training and torch.is_grad_enabled() and output.requires_grad):
            return
        x = inputs[0]

        def store(grad_output, module=module, x=x):
            if self._collect:
                self._samples[id(module)] = per_sample_gradients(x.detach(), grad_output, module.eps)

        output.register_hook(store)

    @contextlib.contextmanager
    def collecting(self):
        """Backward passes inside keep the per-sample gradients that the next step adds to the Fisher."""
        self._collect = True
        try:
            yield
        finally:
            self._collect = False

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # --- the flat vector and its blocks ---------------------------------------------------------------

    def _pieces(self, per_module: list) -> list:
        """Per-module (..., C, 2) tensors as the blocks' (B, ..., k) tensors ([γ..., β...] within a layer)."""
        def flat(t):  # (..., C, 2) -> (..., 2C)
            return t.transpose(-1, -2).reshape(*t.shape[:-2], -1)
        if self.blocks == "full":
            return [torch.cat([flat(t) for t in per_module], dim=-1).unsqueeze(0)]
        if self.blocks == "layer":
            return [flat(t).unsqueeze(0) for t in per_module]
        return [t.movedim(-2, 0) for t in per_module]  # (C, ..., 2)

    def _unpieces(self, pieces: list) -> list:
        """The inverse of _pieces for vectors: (B, k) blocks back to per-module (C, 2) tensors."""
        if self.blocks == "channel":
            return pieces
        vectors = [p[0] for p in pieces]
        if self.blocks == "full":
            vectors = vectors[0].split([2 * m.num_features for m in self.modules])
        return [v.reshape(2, -1).t() for v in vectors]

    def _module_vectors(self, tensors_of) -> list:
        return [torch.stack((tensors_of(m.weight), tensors_of(m.bias)), dim=1) for m in self.modules]

    # --- state ----------------------------------------------------------------------------------------

    def _state(self) -> dict:
        state = self.state[self.modules[0].weight]
        if not state:
            device = self.modules[0].weight.device
            state["step"] = torch.zeros((), dtype=torch.int64)
            state["updates"] = torch.zeros((), dtype=torch.int64)
            state["damping"] = torch.tensor(self.options["damping"], dtype=torch.float64)
            state["scale"] = torch.zeros((), dtype=torch.float64)
            state["velocity"] = torch.zeros(self.size, device=device)
            for j, shape in enumerate(self._block_shapes()):
                state[f"fisher{j}"] = torch.zeros(shape, device=device)
                state[f"factor{j}"] = torch.zeros(shape, device=device)
        return state

    def load_state_dict(self, state_dict) -> None:
        """torch casts a checkpoint's state to the parameters' dtype; the counters and λ keep their own
        here, so that a resumed run computes exactly what the uninterrupted one did."""
        super().load_state_dict(state_dict)
        mine = [p for g in self.param_groups for p in g["params"]]
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        position = next(i for i, p in enumerate(mine) if p is self.modules[0].weight)
        device = self.modules[0].weight.device
        for key, value in state_dict["state"].get(saved[position], {}).items():  # counters stay on the CPU
            self.state[self.modules[0].weight][key] = value.clone() if value.dim() == 0 else value.to(device, copy=True)

    def _block_shapes(self) -> list:
        if self.blocks == "full":
            return [(1, self.size, self.size)]
        if self.blocks == "layer":
            return [(1, 2 * m.num_features, 2 * m.num_features) for m in self.modules]
        return [(m.num_features, 2, 2) for m in self.modules]

    def fisher(self) -> list:
        """The averaged Fisher's blocks, bias-corrected for the average's zero start (the step log reads them)."""
        state = self._state()
        updates = int(state["updates"])
        scale = 1.0 / (1.0 - self.options["ema"] ** updates) if updates else 0.0
        return [state[f"fisher{j}"] * scale for j in range(len(self._block_shapes()))]

    # --- the step -------------------------------------------------------------------------------------

    def _add_batch_fisher(self, state) -> None:
        samples = [self._samples.pop(id(m)) for m in self.modules]  # (N, C, 2) each
        n = samples[0].shape[0]
        blocks = []
        for piece in self._pieces(samples):  # (B, N, k): the per-sample gradients are n x the parts
            blocks.append(torch.bmm(piece.transpose(1, 2), piece) * n)
        if self.world.active:
            flat = torch.cat([b.reshape(-1) for b in blocks]).to(collective_device())
            dist.all_reduce(flat)
            flat = (flat / self.world.size).to(blocks[0].device)
            blocks = [part.view_as(b) for part, b in zip(flat.split([b.numel() for b in blocks]), blocks)]
        ema = self.options["ema"]
        for j, block in enumerate(blocks):
            state[f"fisher{j}"].mul_(ema).add_(block, alpha=1.0 - ema)
        state["updates"] += 1

    def _refresh(self, state) -> None:
        """The preconditioner of each block, m^p (F + λ m I)^(-p) with m = trace(F) / size the Fisher's
        mean eigenvalue (so λ is relative to the curvature's scale, and a Fisher whose eigenvalues are all m
        gives g / (1 + λ)^p: --lr means what it means for SGD); for p = 1 through a Cholesky factorisation,
        otherwise an eigendecomposition, both in float64. Kept as a float32 matrix: a step is then one
        matrix-vector product (cholesky_solve copied the factor at every step)."""
        power = self.options["power"]
        blocks = self.fisher()
        scale = sum(float(b.diagonal(dim1=-2, dim2=-1).sum()) for b in blocks) / self.size
        for j, fisher in enumerate(blocks):
            eye = torch.eye(fisher.shape[-1], device=fisher.device, dtype=torch.float64)
            while True:
                shift = float(state["damping"]) * scale + DAMPING_RANGE[0]
                damped = fisher.double() + shift * eye
                if power == 1.0:
                    factor, info = torch.linalg.cholesky_ex(damped)
                    if not bool(info.any()):
                        matrix = torch.cholesky_inverse(factor) * scale
                        break
                else:
                    values, vectors = torch.linalg.eigh(damped)
                    if bool((values > 0).all()):
                        matrix = (vectors * (values / scale).pow(-power).unsqueeze(-2)) @ vectors.transpose(-1, -2)
                        break
                state["damping"].fill_(min(float(state["damping"]) * 10, DAMPING_RANGE[1]))  # numerically
                # indefinite: more damping
            state[f"factor{j}"].copy_(matrix)
        state["scale"].fill_(scale)

    def _precondition(self, state, pieces: list) -> list:
        return [torch.bmm(state[f"factor{j}"], g.unsqueeze(-1)).squeeze(-1) for j, g in enumerate(pieces)]

    def _quadratic(self, pieces_g: list, pieces_s: list) -> torch.Tensor:
        """gᵀs + 0.5 sᵀFs: the change in loss the averaged Fisher predicts for step s."""
        total = torch.zeros((), dtype=torch.float64, device=pieces_g[0].device)
        for fisher, g, s in zip(self.fisher(), pieces_g, pieces_s):
            total += (g * s).sum().double() + 0.5 * (s.unsqueeze(-2) @ fisher @ s.unsqueeze(-1)).sum().double()
        return total

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One step. With `closure` (the batch's loss at the parameters after the step) and `loss` (before
        it), on refresh steps λ adapts to ρ = actual / predicted change."""
        state = self._state()
        decay = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        group = self.param_groups[0]
        raw = self._module_vectors(lambda p: p.grad if p.grad is not None else torch.zeros_like(p))
        grads = [r + torch.stack((decay[id(m.weight)] * m.weight, decay[id(m.bias)] * m.bias), dim=1)
                 for r, m in zip(raw, self.modules)]
        if len(self._samples) == len(self.modules):
            self._add_batch_fisher(state)
        self._samples.clear()
        state["step"] += 1
        refresh = (int(state["step"]) - 1) % self.options["refresh"] == 0
        if int(state["updates"]) == 0:  # no curvature yet (a sampled Fisher's first backward missing): SGD
            pieces_d = self._pieces(grads)
        else:
            if refresh:
                self._refresh(state)
            pieces_d = self._precondition(state, self._pieces(grads))
        direction = torch.cat([d.reshape(-1) for d in self._unpieces_flat(pieces_d)])
        velocity = state["velocity"].mul_(group["momentum"]).add_(direction)
        step_flat = -group["lr"] * velocity
        steps = step_flat.split([2 * m.num_features for m in self.modules])
        for m, s in zip(self.modules, steps):
            c = m.num_features
            m.weight.add_(s[:c])
            m.bias.add_(s[c:])
        g_flat = torch.cat([v.t().reshape(-1) for v in raw])
        self.last = {"step": int(state["step"]), "damping": float(state["damping"]),
                     "cosine": torch.nn.functional.cosine_similarity(direction, g_flat, dim=0)}  # a tensor: no
        # wait for the device unless someone reads it
        if closure is not None and loss is not None and refresh and int(state["updates"]) > 0:
            self._adapt_damping(state, closure, loss, raw, steps)
        return loss

    def _unpieces_flat(self, pieces: list) -> list:
        """Blocks back to each layer's [γ..., β...] vector."""
        return [v.t().reshape(-1) for v in self._unpieces(pieces)]

    def _adapt_damping(self, state, closure, before, raw, steps) -> None:
        after = closure()
        change = torch.stack([torch.as_tensor(after).double().reshape(()),
                              torch.as_tensor(before).double().reshape(())])
        if self.world.active:  # the global batch's losses, so that every rank adapts λ alike
            change = change.to(collective_device())
            dist.all_reduce(change)
            change /= self.world.size
        actual = float(change[0] - change[1])
        s = [v.reshape(2, -1).t() for v in steps]
        predicted = float(self._quadratic(self._pieces(raw), self._pieces(s)))
        rho = actual / predicted if predicted < 0 else float("-inf")
        damping = float(state["damping"])
        if rho > 0.75:
            damping /= DAMPING_FACTOR
        elif rho < 0.25:
            damping *= DAMPING_FACTOR
        state["damping"].fill_(min(max(damping, DAMPING_RANGE[0]), DAMPING_RANGE[1]))
        self.last.update(rho=rho, actual=actual, predicted=predicted)
