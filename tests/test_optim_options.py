"""Optimizer options: L-BFGS line search, history mode and chunked batches; weight decay on BatchNorm;
label smoothing."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from bnonly.training import engine
from bnonly.config import ConfigError, parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.training.compute import Compute
from bnonly.optim.factories import build_optimizer
from bnonly.training.engine import lbfgs_chunks, lbfgs_step, sgd_step, train_one_epoch
from bnonly.models.resnet import build_model, freeze, select_parameters
from bnonly.training.trainer import setup_phase

FP32 = Compute(torch.device("cpu"))


def batch(n=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def lbfgs_model(*flags, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20")
    cfg = parse_args(["--optimizer", "lbfgs", "--lbfgs-variant", "torch", "-t", "bn", *flags])[0]
    return model, cfg, build_optimizer(cfg, freeze(model, "bn"))


def test_line_search_flag_reaches_lbfgs():
    assert lbfgs_model()[2].param_groups[0]["line_search_fn"] == "strong_wolfe"
    assert lbfgs_model("--lbfgs-line-search", "none")[2].param_groups[0]["line_search_fn"] is None


def test_max_eval_flag_sets_the_evaluation_cap_and_frees_the_iterations():
    """torch's default cap, max_iter * 5 // 4 evaluations, lets a strong-Wolfe step of --lbfgs-max-iter 2
    make one iteration; --lbfgs-max-eval raises the cap and the step makes both."""
    images, labels = batch(32)
    iterations = {}
    for flags in ((), ("--lbfgs-max-eval", "10")):
        model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "2", "--lr", "0.1", *flags)
        model.eval()
        lbfgs_step(model, optimizer, images, labels, 0.0, FP32)
        group = optimizer.param_groups[0]
        iterations[group["max_eval"]] = optimizer.state[group["params"][0]]["n_iter"]
    assert iterations == {2: 1, 10: 2}


def test_bad_max_eval_is_refused():
    with pytest.raises(ConfigError, match="--lbfgs-max-eval must be at least 1"):
        parse_args(["--optimizer", "lbfgs", "--lbfgs-max-eval", "0"])


def test_without_line_search_lbfgs_takes_max_iter_passes_and_a_short_first_step():
    """No line search: one pass per iteration, and from an empty memory torch's step along -g is
    min(1, 1/|g|_1) * lr (docs/usage.md says so)."""
    images, labels = batch(32)
    model, cfg, optimizer = lbfgs_model("--lbfgs-line-search", "none", "--lbfgs-max-iter", "1", "--lr", "0.5")
    model.eval()
    params = optimizer.param_groups[0]["params"]
    start = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params)
    g_norm1 = sum(g.abs().sum() for g in grads)
    step = lbfgs_step(model, optimizer, images, labels, 0.0, FP32)
    assert step["passes"] == 1
    factor = min(1.0, 1.0 / float(g_norm1)) * 0.5
    for p, p0, g in zip(params, start, grads):
        torch.testing.assert_close(p.detach(), p0 - factor * g, rtol=1e-4, atol=1e-6)
    model, cfg, optimizer = lbfgs_model("--lbfgs-line-search", "none", "--lbfgs-max-iter", "4")
    model.eval()
    assert lbfgs_step(model, optimizer, images, labels, 0.0, FP32)["passes"] == 4


def test_chunked_lbfgs_step_equals_the_whole_batch_step():
    """With BN in eval mode (no batch statistics) chunks change nothing but the memory needed."""
    images, labels = batch(48)
    results = []
    for chunks in (1, 3):
        model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "3")
        start = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
        model.eval()
        step = lbfgs_step(model, optimizer, images, labels, 1e-3, FP32, chunks=chunks)
        results.append((step, [p.detach().clone() for p in optimizer.param_groups[0]["params"]]))
    (whole, whole_params), (chunked, chunked_params) = results
    assert whole["passes"] == chunked["passes"] > 1
    assert float(chunked["loss"]) == pytest.approx(float(whole["loss"]), rel=1e-5)
    assert int(chunked["correct"]) == int(whole["correct"])
    for a, b in zip(whole_params, chunked_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a, p) for a, p in zip(chunked_params, start))  # the step moved the parameters


def test_chunked_loss_is_the_batch_mean_in_train_mode():
    images, labels = batch(48)
    model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "1")
    with torch.no_grad():
        expected = sum(F.cross_entropy(model(images[i:i + 16]), labels[i:i + 16]) for i in (0, 16, 32)) / 3
    model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "1")
    assert float(lbfgs_step(model, optimizer, images, labels, 0.0, FP32, chunks=3)["loss"]) == pytest.approx(
        float(expected), rel=1e-5)


def test_chunk_counts_are_equal_on_every_rank():
    from bnonly.distributed import World
    assert lbfgs_chunks(2048, World(), 0) == 1 and lbfgs_chunks(2048, World(), 512) == 4
    assert lbfgs_chunks(2001, World(0, 2), 1000) == lbfgs_chunks(2001, World(1, 2), 1000) == 1  # shards 1001/1000
    assert lbfgs_chunks(5, World(0, 4), 1) == 1  # never more pieces than the smallest shard has images


def run_epoch(model, optimizer, cfg, n):
    """One train_one_epoch over `n` random uint8 images (epoch 1, seed 0) on the CPU in fp32."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    pipeline = ImageInputs((128.0,) * 3, (64.0,) * 3, "cpu")
    return train_one_epoch(model, optimizer, cfg, (images, labels), pipeline, torch.Generator().manual_seed(0), 1, FP32)


def epoch_state(mode):
    """L-BFGS iterations remembered after an epoch of 4 batches with the given history mode."""
    model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "2", "--lbfgs-batch-size", "16",
                                        "--lbfgs-history-mode", mode, "--no-progress")
    run_epoch(model, optimizer, cfg, 64)
    return optimizer.state[optimizer.param_groups[0]["params"][0]]


def test_history_mode_reset_forgets_between_batches():
    persist, reset = epoch_state("persist"), epoch_state("reset")
    assert persist["n_iter"] >= 4 and reset["n_iter"] <= 2  # counts every batch's iterations, or the last's
    assert len(persist["old_dirs"]) > len(reset["old_dirs"])  # curvature pairs of earlier batches were kept


def test_bn_weight_decay_switch():
    model = build_model("resnet20")
    params = freeze(model, "all")
    bn = select_parameters(model, "bn")
    default = build_optimizer(parse_args([])[0], params)
    assert len(default.param_groups) == 1 and default.param_groups[0]["weight_decay"] == 1e-4
    cfg = parse_args(["--bn-weight-decay", "false"])[0]
    split = build_optimizer(cfg, params, no_decay=bn)
    assert [g["weight_decay"] for g in split.param_groups] == [1e-4, 0.0]
    assert {id(p) for p in split.param_groups[1]["params"]} == {id(p) for p in bn}
    adamw = build_optimizer(parse_args(["--optimizer", "adamw", "--bn-weight-decay", "false"])[0], params, bn)
    assert [g["weight_decay"] for g in adamw.param_groups] == [1e-4, 0.0]


def test_bn_weight_decay_flag_sets_the_optimizer_groups_of_a_run():
    """train.setup_phase turns --bn-weight-decay false into an undecayed group of exactly BN's parameters."""
    for mode in ("all", "bn"):
        model = build_model("resnet20")
        bn = {id(p) for p in select_parameters(model, "bn")}
        params, no_decay, optimizer, _ = setup_phase(parse_args(["-t", mode])[0], model, mode, 2)
        assert no_decay == [] and [g["weight_decay"] for g in optimizer.param_groups] == [1e-4]
        params, no_decay, optimizer, _ = setup_phase(parse_args(["-t", mode, "--bn-weight-decay", "false"])[0],
                                                     model, mode, 2)
        assert {id(p) for p in no_decay} == bn
        assert [g["weight_decay"] for g in optimizer.param_groups] == ([1e-4, 0.0] if mode == "all" else [0.0])
        assert {id(p) for p in optimizer.param_groups[-1]["params"]} == bn
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in params}


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_the_epoch_loop_passes_label_smoothing_to_the_step(monkeypatch, optimizer):
    """--label-smoothing reaches the step function that train_one_epoch calls, for SGD and L-BFGS."""
    seen = []
    step_name = f"{optimizer}_step"
    real = getattr(engine, step_name)

    def spy(*args, **kwargs):
        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments.get("label_smoothing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, step_name, spy)
    torch.manual_seed(0)
    model = build_model("resnet20")
    cfg = parse_args(["--optimizer", optimizer, "-t", "bn", "--label-smoothing", "0.2", "-b", "16",
                      "--lbfgs-variant", "torch", "--lbfgs-batch-size", "16", "--lbfgs-max-iter", "1"])[0]
    run_epoch(model, build_optimizer(cfg, freeze(model, "bn")), cfg, 32)
    assert seen == [0.2, 0.2]


def test_bn_parameters_without_decay_do_not_shrink():
    """A zero learning signal (lr on a frozen loss) leaves only decay: the BN parameters must not move."""
    model = build_model("resnet20")
    params = freeze(model, "bn")
    cfg = parse_args(["-t", "bn", "--wd", "0.5", "--bn-weight-decay", "false", "--momentum", "0"])[0]
    optimizer = build_optimizer(cfg, params, no_decay=params)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    decayed = build_optimizer(parse_args(["-t", "bn", "--wd", "0.5", "--momentum", "0"])[0], params)
    decayed.step()
    assert not all(torch.equal(a, p) for a, p in zip(before, params))


def test_lbfgs_leaves_undecayed_parameters_out_of_the_l2_term():
    images, labels = batch(32)
    final = {}
    for name, wd, decayed in (("none", 0.0, None), ("bn_off", 10.0, []), ("on", 10.0, None)):
        model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "2")
        model.eval()
        lbfgs_step(model, optimizer, images, labels, wd, FP32, decayed=decayed)
        final[name] = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    assert all(torch.equal(a, b) for a, b in zip(final["none"], final["bn_off"]))
    assert not all(torch.equal(a, b) for a, b in zip(final["none"], final["on"]))


def test_label_smoothing_changes_the_training_loss_only():
    images, labels = batch(16)
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    plain = sgd_step(model, None, images, labels, FP32)["loss"]
    smooth = sgd_step(model, None, images, labels, FP32, label_smoothing=0.1)["loss"]
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    assert float(smooth) == pytest.approx(float(expected)) and float(smooth) != pytest.approx(float(plain))
    model, cfg, optimizer = lbfgs_model("--lbfgs-max-iter", "1")
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    assert float(lbfgs_step(model, optimizer, images, labels, 0.0, FP32, label_smoothing=0.1)["loss"]) == \
        pytest.approx(float(expected), rel=1e-5)
    for bad in ("1", "-0.1", "nan"):
        with pytest.raises(Exception, match="label-smoothing"):
            parse_args(["--label-smoothing", bad])
