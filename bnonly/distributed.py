"""Data parallelism under torchrun: one process per GPU (NCCL) or per CPU worker (gloo).

`python train.py` is one process (World(), everything below is then a no-op). Under
`torchrun --nproc_per_node=N train.py ...` each process reads its RANK, WORLD_SIZE and LOCAL_RANK from
the environment, and:

- every rank draws the same seeded epoch order and augments each *global* batch (N x -b images) the
  same way, then trains on its own contiguous slice of it (`shard`), so the global batch is exactly
  the single-process batch of that size;
- gradients are averaged by DistributedDataParallel; each rank's loss is weighted by its share of the
  global batch, so uneven last batches still give the gradient of the global mean;
- BatchNorm uses each rank's batch statistics, or the global batch's with --sync-bn (torch's
  SyncBatchNorm on GPUs; `GlobalBatchNorm1d/2d` on the CPU, where torch's supports no gloo); running
  statistics are averaged over the ranks before evaluation and checkpoints;
- evaluation splits each held-out set into disjoint slices and sums exact counts over the ranks.
"""

import dataclasses
import datetime
import inspect
import os

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the job; the default is the single process of `python train.py`."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this node

    @property
    def main(self) -> bool:
        """The rank that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env(environ=os.environ) -> World:
    """The World torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a single process without them)."""
    size = int(environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(environ["RANK"]), size, int(environ.get("LOCAL_RANK", "0")),
                 int(environ.get("LOCAL_WORLD_SIZE", str(size))))


def start(world: World, device: torch.device, timeout_minutes: float = 30.0) -> None:
    """Join the process group: NCCL for CUDA, gloo otherwise. A rank that never arrives, or a collective
    that waits longer than `timeout_minutes`, ends the job with an error instead of a hang."""
    if not world.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))


def stop(world: World) -> None:
    """Leave the process group: wait until every rank is done with its collectives, then destroy it.
    (Without the barrier a rank could exit while gloo still held work of the other's, and abort.)"""
    if world.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """This rank's contiguous part of n items; the parts cover every item once and differ by at most one."""
    base, extra = divmod(n, world.size)
    start_at = world.rank * base + min(world.rank, extra)
    return slice(start_at, start_at + base + (world.rank < extra))


def collective_device() -> torch.device:
    """Where the process group's tensors must live: this process's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(world: World, *tensors: torch.Tensor) -> list:
    """The sums over the ranks of scalar tensors, in one collective (the values unchanged in a single
    process); each returned in its own dtype and on its own device, computed in float64."""
    if not world.active:
        return list(tensors)
    stacked = torch.stack([t.detach().to(collective_device(), torch.float64).reshape(()) for t in tensors])
    dist.all_reduce(stacked)
    return [value.to(t.device, t.dtype) for value, t in zip(stacked, tensors)]


def all_sum_vector(world: World, vector: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of a 1-D tensor, in float64, returned in float64 on its own device (the
    tensor itself in a single process). Every rank gets the same bits back."""
    if not world.active:
        return vector.double()
    summed = vector.detach().to(collective_device(), torch.float64)
    dist.all_reduce(summed)
    return summed.to(vector.device)


def any_rank(world: World, *flags: bool) -> list:
    """For each flag, whether it is set on any rank (one collective), so all ranks decide alike."""
    if not world.active:
        return [bool(f) for f in flags]
    values = torch.tensor([float(bool(f)) for f in flags], device=collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def in_turn(world: World, action):
    """Run `action` on rank 0 first, then on the first process of every other node, then on the rest, so
    that a download or a cache is written once and then read (a no-op ordering in a single process)."""
    if not world.active:
        return action()
    stage = 0 if world.rank == 0 else 1 if world.local_rank == 0 else 2
    result = None
    for turn in range(3):
        if turn == stage:
            result = action()
        dist.barrier()
    return result


def broadcast_value(world: World, value):
    """Rank 0's value (any picklable object) on every rank."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_bn_statistics(model: nn.Module, world: World) -> None:
    """Make the BatchNorm running means and variances the average over the ranks (identical everywhere)."""
    if not world.active:
        return
    buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var) if b is not None]
    if not buffers:
        return
    flat = torch.cat([b.detach().double().flatten() for b in buffers])
    dist.all_reduce(flat)
    flat /= world.size
    for b, value in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(value.view_as(b))


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the sum of the ranks' gradients (torch.distributed.nn's own
    all_reduce does this too but is deprecated)."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalStatistics:
    """A BatchNorm whose training statistics are those of the global batch, over all ranks, for backends
    torch.nn.SyncBatchNorm does not serve (gloo on the CPU); mixed into BatchNorm1d (N, C, T) and
    BatchNorm2d (N, C, H, W). Outside training or outside a process group it is the plain layer.
    Statistics are computed in float32 in two passes."""

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, *range(2, x.dim()))  # every dimension but the channels
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x32 = x.float()
        count = x32.new_full((1,), float(x.numel() // x.shape[1]))
        sums = _AllReduceSum.apply(torch.cat([x32.sum(dims), count]))  # the channel sums and the global count
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centered = x32 - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1.0).clamp(min=1.0))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


class GlobalBatchNorm1d(GlobalStatistics, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(GlobalStatistics, nn.BatchNorm2d):
    pass


GLOBAL_BATCHNORM = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn: torch.nn.SyncBatchNorm on CUDA; GlobalBatchNorm1d/2d elsewhere. Parameters, buffers and the
    requires_grad flags are kept, so the state_dict is unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) in GLOBAL_BATCHNORM:
            replacement = GLOBAL_BATCHNORM[type(child)](child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats, device=device)
            replacement.load_state_dict(child.state_dict())
            if child.affine:
                replacement.weight.requires_grad_(child.weight.requires_grad)
                replacement.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, replacement)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module that trains: DistributedDataParallel around `model` under torchrun (when something
    trains), `model` itself otherwise. Buffers are not broadcast each step: each rank keeps its own BN
    running statistics until average_bn_statistics."""
    if not world.active or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # the buffers are equal at the start; newer torch names "no sync in forward" forward_sync_buffers
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else {"broadcast_buffers": False}
    return ddp(model, device_ids=device_ids, **no_sync)
