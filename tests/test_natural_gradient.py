"""--optimizer ngd (bnonly/optim/natural_gradient.py): per-sample gradients, one damped Newton step on a
quadratic, the block structures, the state's round trip, resume to the bit, ranks in lockstep, refusals."""

import io
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import TINY, assert_one_line_error, read_csv, run_train, without_timings
from bnonly.config import parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.distributed import World, stop, wrap
from bnonly.models.freezing import is_batchnorm
from bnonly.models.resnet import build_model, freeze
from bnonly.optim.factories import build_optimizer
from bnonly.optim.natural_gradient import NaturalGradient, choose_blocks
from bnonly.training.compute import Compute
from bnonly.training.engine import train_one_epoch
from bnonly.training.ngd_step import ngd_step

NGD = [*TINY, "-t", "bn", "--optimizer", "ngd", "--val-split", "64", "--ngd-refresh", "2", "--schedule", "constant"]


def bn_only(arch="resnet20", seed=0):
    torch.manual_seed(seed)
    model = build_model(arch)
    params = freeze(model, "bn")
    return model, params, [m for m in model.modules() if is_batchnorm(m)]


def test_per_sample_gradients_add_up_to_the_batch_gradient_through_inplace_relu():
    model, params, modules = bn_only()
    optimizer = NaturalGradient(params, modules)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    with optimizer.collecting():
        F.cross_entropy(model(x), y).backward()
    assert len(optimizer._samples) == len(modules)
    for m in modules:
        samples = optimizer._samples[id(m)]  # (N, C, 2)
        assert samples.shape == (12, m.num_features, 2)
        torch.testing.assert_close(samples[:, :, 0].sum(0), m.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(samples[:, :, 1].sum(0), m.bias.grad, rtol=1e-4, atol=1e-6)
    optimizer.zero_grad()
    optimizer._samples.clear()
    F.cross_entropy(model(x), y).backward()  # outside collecting(): nothing is kept
    assert not optimizer._samples


def quadratic(blocks: str, channels=(3, 2), n=40, seed=0):
    """Least squares 0.5 mean_i (a_i.θ - b_i)^2 over the γ, β of two BatchNorm layers; its Gauss-Newton
    matrix is its Hessian, and the rows a_i / n are the per-sample parts of its gradient. With blocks
    other than "full", each a_i touches one channel's (γ, β) only, so the Hessian is 2 x 2 block-diagonal
    and the blocks hold all of it."""
    g = torch.Generator().manual_seed(seed)
    modules = [torch.nn.BatchNorm2d(c) for c in channels]
    size = 2 * sum(channels)
    a = torch.randn(n, size, generator=g, dtype=torch.float64)
    if blocks != "full":  # each row lives in one (γ_c, β_c) pair
        mask = torch.zeros(n, size, dtype=torch.float64)
        offsets = [0, 2 * channels[0]]
        for i in range(n):
            layer = i % 2
            c = (i // 2) % channels[layer]
            mask[i, offsets[layer] + c] = mask[i, offsets[layer] + channels[layer] + c] = 1
        a = a * mask
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return modules, a, b


def flat(modules):
    return torch.cat([torch.cat((m.weight, m.bias)) for m in modules]).double()


@pytest.mark.parametrize("blocks", ["full", "layer", "channel"])
def test_one_damped_newton_step_lands_at_the_minimum_of_a_quadratic(blocks):
    modules, a, b = quadratic(blocks)
    with torch.no_grad():
        for m in modules:
            m.weight.uniform_()
    params = [p for m in modules for p in (m.weight, m.bias)]
    optimizer = NaturalGradient(params, modules, lr=1.0, momentum=0.0, damping=1e-7, ema=0.0, refresh=1,
                                blocks=blocks)
    theta = flat(modules).detach()
    residual = a @ theta - b
    gradient = a.t() @ residual / len(b)
    hessian = a.t() @ a / len(b)
    minimum = theta - torch.linalg.solve(hessian, gradient)
    layers = [[2 * m.num_features] for m in modules]
    offset = 0
    for m, (width,) in zip(modules, layers):  # hand the optimizer the gradient and the per-sample parts
        c = m.num_features
        m.weight.grad = gradient[offset:offset + c].float()
        m.bias.grad = gradient[offset + c:offset + width].float()
        rows = a[:, offset:offset + width] / len(b)  # (n, 2C) as [γ..., β...]
        optimizer._samples[id(m)] = torch.stack((rows[:, :c], rows[:, c:]), dim=2).float()
        offset += width
    scale = float(hessian.trace()) / len(theta)  # the step is on SGD's scale: lr 1 / m is Newton's
    optimizer.param_groups[0]["lr"] = 1.0 / scale
    optimizer.step()
    torch.testing.assert_close(flat(modules).detach(), minimum, rtol=1e-4, atol=1e-4)
    after = a @ flat(modules).detach() - b
    assert float(after @ after) < float(residual @ residual)


def test_auto_blocks_follow_the_size():
    assert choose_blocks([16] * 19 + [32] * 10 + [64] * 10, "auto") == "full"  # ResNet-32: 2,272 numbers
    assert choose_blocks([64, 256, 2048], "auto") == "layer"  # ResNet-50's layers, 53,120 numbers in all
    assert choose_blocks([4096], "auto") == "channel"
    assert choose_blocks([16], "layer") == "layer"


def steps(model, optimizer, batches, fisher="empirical"):
    cpu = Compute(torch.device("cpu"))
    for x, y in batches:
        ngd_step(model, optimizer, x, y, cpu, fisher, torch.Generator().manual_seed(len(y)))


def batches(count, seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)) for _ in range(count)]


@pytest.mark.parametrize("fisher, power", [("empirical", 1.0), ("sampled", 1.0), ("empirical", 0.5)])
def test_state_round_trip_continues_to_the_bit(fisher, power):
    model, params, modules = bn_only()
    optimizer = NaturalGradient(params, modules, lr=0.2, refresh=2, power=power)
    steps(model, optimizer, batches(3), fisher)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    state = optimizer.state[modules[0].weight]
    assert state["updates"] == 3 and state["damping"].dtype == torch.float64 and float(state["scale"]) > 0
    twin, twin_params, twin_modules = bn_only(seed=5)
    twin.load_state_dict(saved["model"])
    twin_optimizer = NaturalGradient(twin_params, twin_modules, lr=0.2, refresh=2, power=power)
    twin_optimizer.load_state_dict(saved["optimizer"])
    for key, value in state.items():
        assert torch.equal(twin_optimizer.state[twin_modules[0].weight][key], value), key
    later = batches(3, seed=2)
    steps(model, optimizer, later, fisher)
    steps(twin, twin_optimizer, later, fisher)
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(params[0], saved["model"]["bn1.weight"])


@pytest.mark.parametrize("power", ["0.5", "1"])  # the default's eigendecomposition, the natural gradient's Cholesky
def test_a_run_resumed_from_its_checkpoint_matches_the_uninterrupted_one(tmp_path, power):
    flags = [*NGD, "--ngd-power", power]
    straight = run_train(*flags, "--epochs", "3", "--save-dir", tmp_path / "straight")
    first = run_train(*flags, "--epochs", "2", "--save-dir", tmp_path / "split")
    resumed = run_train("--resume", tmp_path / "split", "--epochs", "3", "--no-progress")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr[-2000:]
    rows = without_timings(read_csv(tmp_path / "straight" / "history.csv"))
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == rows
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns


def _lockstep_worker(rank, size, init_file, out_dir, fisher, power):
    """One rank of a BN-only ngd epoch: every rank trains on its half of each global batch of 32."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    world = World(rank, size)
    torch.manual_seed(0)
    model = build_model("resnet20")
    cfg = parse_args(["--optimizer", "ngd", "-t", "bn", "-b", "16", "--ngd-refresh", "2", "--ngd-fisher", fisher,
                      "--ngd-power", power, "--no-progress"])[0]
    optimizer = build_optimizer(cfg, freeze(model, "bn"), (), model, world)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (96,), generator=generator)
    pipeline = ImageInputs((128.0,) * 3, (64.0,) * 3, "cpu")
    train_one_epoch(wrap(model, world, torch.device("cpu")), optimizer, cfg, (images, labels), pipeline,
                    torch.Generator().manual_seed(2), 1, Compute(torch.device("cpu")), world=world)
    state = optimizer.state[optimizer.modules[0].weight]
    torch.save({"params": [p.detach() for m in optimizer.modules for p in (m.weight, m.bias)],
                "fisher": state["fisher0"], "damping": state["damping"], "updates": state["updates"]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    stop(world)


@pytest.mark.parametrize("fisher, power", [("empirical", "0.5"), ("empirical", "1"),
                                           pytest.param("sampled", "0.5", marks=pytest.mark.slow)])
def test_ranks_average_the_fisher_and_take_identical_steps(tmp_path, fisher, power):
    mp.spawn(_lockstep_worker, args=(2, str(tmp_path / "init"), str(tmp_path), fisher, power), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["updates"] == ranks[1]["updates"] == 3  # 96 images in global batches of 32
    assert torch.equal(ranks[0]["fisher"], ranks[1]["fisher"])  # the ranks' Fishers averaged alike
    assert ranks[0]["damping"] == ranks[1]["damping"]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    start = [p.detach() for p in freeze(build_model("resnet20"), "bn")]
    assert any(not torch.equal(a, b) for a, b in zip(ranks[0]["params"], start))


@pytest.mark.parametrize("flags,words", [
    (["-t", "all"], ["ngd", "-t bn"]),
    (["-t", "bn", "--precision", "fp16"], ["ngd", "fp16"]),
    (["-t", "bn", "--compile", "true"], ["ngd", "--compile"]),
    (["-t", "bn", "--ngd-ema", "1"], ["--ngd-ema"]),
    (["-t", "bn", "--ngd-damping", "0"], ["--ngd-damping"]),
    (["-t", "bn", "--ngd-refresh", "0"], ["--ngd-refresh"]),
])
def test_what_ngd_cannot_do_is_a_one_line_error(tmp_path, flags, words):
    result = run_train(*TINY, "--optimizer", "ngd", *flags, "--epochs", "1", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_ngd_cannot_be_a_phase_that_trains_more_than_batchnorm(tmp_path):
    result = run_train(*TINY, "--optimizer", "ngd", "--phases", "bn:1,all:1", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, "ngd", "-t bn")
    assert not (tmp_path / "run").exists()
