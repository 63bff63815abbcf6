"""The stochastic L-BFGS variants: optimum, secant pairs, same-batch rule, line search, rollback, state."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from bnonly.optim.batch_objective import BatchObjective, Piece, quasi_newton_step
from bnonly.config import parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.training.compute import Compute
from bnonly.optim.factories import build_optimizer
from bnonly.optim.line_search import backtracking
from bnonly.optim.quasi_newton import DAMPING, StochasticLBFGS, flat, two_loop

CPU = Compute(torch.device("cpu"))
PAIRS = ("same-batch", "overlap", "hvp")


def logistic_data(n=240, d=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = (x @ torch.randn(d, classes, generator=generator, dtype=torch.float64)
              + torch.randn(n, classes, generator=generator, dtype=torch.float64)).argmax(1)
    return x, labels


def logistic_model(d=6, classes=3):
    model = torch.nn.Linear(d, classes).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model


def full_batch_objective(model, x, labels, step, weight_decay=1e-2):
    """The whole data set as a two-part batch whose halves swap every step, so the half a step shares with
    the next (its tail) is the next one's head, as the multibatch variant needs; the objective is the same
    at every step."""
    halves = [(x[:len(x) // 2], labels[:len(x) // 2]), (x[len(x) // 2:], labels[len(x) // 2:])]
    if step % 2:
        halves.reverse()
    pieces = [Piece(inputs, y, part) for part, (inputs, y) in enumerate(halves)]
    params = list(model.parameters())
    return BatchObjective(model, params, pieces, [len(y) for _, y in halves], CPU, params, weight_decay,
                          has_head=step > 0)


def torch_optimum(x, labels, weight_decay=1e-2):
    """torch's full-batch L-BFGS run to convergence on the same objective."""
    model = logistic_model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, history_size=20, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), labels) + 0.5 * weight_decay * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    optimizer.step(closure)
    return flat([p.detach() for p in model.parameters()]), float(closure().detach())


@pytest.mark.parametrize("pairs,line_search,max_iter,options", [
    ("same-batch", "armijo", 2, {}), ("same-batch", "none", 2, {}), ("overlap", "none", 1, {}),
    ("overlap", "armijo", 1, {}), ("hvp", "none", 1, {}), ("overlap", "none", 1, {"momentum": 0.5}),
    ("overlap", "none", 1, {"damping": 0.1})])
def test_each_variant_reaches_the_full_batch_optimum(pairs, line_search, max_iter, options):
    x, labels = logistic_data()
    optimum, best = torch_optimum(x, labels)
    model = logistic_model()
    optimizer = StochasticLBFGS(model.parameters(), lr=1.0, pairs=pairs, max_iter=max_iter, line_search=line_search,
                                **options)
    for step in range(60):
        optimizer.step(full_batch_objective(model, x, labels, step))
    reached = flat([p.detach() for p in model.parameters()])
    loss = full_batch_objective(model, x, labels, 0).loss()
    assert loss <= best + 1e-9  # torch's own stopping tolerance leaves it ~1e-8 above the optimum
    torch.testing.assert_close(reached, optimum, atol=1e-4, rtol=0)
    assert len(optimizer.state[optimizer.param_groups[0]["params"][0]]["s"]) > 0  # it did use curvature


class Quadratic:
    """0.5 x'Ax - b'x: every pair of gradients, from anywhere, gives y = A s."""

    def __init__(self, x: torch.nn.Parameter, seed=0):
        generator = torch.Generator().manual_seed(seed)
        m = torch.randn(5, 5, generator=generator, dtype=torch.float64)
        self.x, self.a, self.b = x, m @ m.T + torch.eye(5, dtype=torch.float64), torch.randn(5, generator=generator,
                                                                                             dtype=torch.float64)

    def loss(self):
        x = self.x.detach()
        return float(0.5 * x @ self.a @ x - self.b @ x)

    def gradient(self):
        return self.loss(), self.a @ self.x.detach() - self.b

    def part_gradients(self):
        loss, grad = self.gradient()
        return loss, grad, grad, grad

    def hvp(self, vector):
        return self.a @ vector


@pytest.mark.parametrize("pairs", PAIRS)
def test_pairs_on_a_quadratic_satisfy_the_secant_equation(pairs):
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    problem = Quadratic(x)
    optimizer = StochasticLBFGS([x], lr=0.3, pairs=pairs, max_iter=2 if pairs == "same-batch" else 1,
                                line_search="none")
    for _ in range(4):
        optimizer.step(problem)
    state = optimizer.state[x]
    assert len(state["s"]) >= 2
    for s, y in zip(state["s"], state["y"]):
        torch.testing.assert_close(y, problem.a @ s + DAMPING * s)  # the pair is the curvature along s
    inverse = torch.stack([two_loop(e, state["s"], state["y"], optimizer.gamma(state))
                           for e in torch.eye(5, dtype=torch.float64)])
    torch.testing.assert_close(inverse @ state["y"][-1], state["s"][-1])  # H y = s for the newest pair


class Batch:
    """A least-squares batch that logs every gradient evaluation: (batch id, point, gradient)."""

    def __init__(self, x, ident, log):
        generator = torch.Generator().manual_seed(ident)
        self.x, self.ident, self.log = x, ident, log
        self.m, self.t = torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.randn(8, generator=generator,
                                                                                                  dtype=torch.float64)

    def loss(self):
        return float(0.5 * (self.m @ self.x.detach() - self.t).square().mean())

    def gradient(self):
        grad = self.m.T @ (self.m @ self.x.detach() - self.t) / len(self.t)
        self.log.append((self.ident, self.x.detach().clone(), grad))
        return self.loss(), grad


def test_the_memory_fills_to_the_history_size_and_then_drops_the_oldest():
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    optimizer = StochasticLBFGS([x], history_size=3, line_search="none")
    state = optimizer._state()
    pairs = [(torch.eye(5, dtype=torch.float64)[i], (i + 1.0) * torch.eye(5, dtype=torch.float64)[i]) for i in range(5)]
    sizes = []
    for s, y in pairs:
        assert optimizer.remember(state, s, y)
        sizes.append(len(state["s"]))
    assert sizes == [1, 2, 3, 3, 3]
    torch.testing.assert_close(state["s"], torch.stack([s for s, _ in pairs[2:]]))
    assert not optimizer.remember(state, pairs[0][0], -pairs[0][1])  # negative curvature is refused



def test_damping_bounds_the_inverse_hessian_and_never_rescues_negative_curvature():
    """A stored pair's curvature y.s / s.s is at least the damping; a pair of slightly negative curvature,
    which the damping would lift to a tiny positive one (an inverse Hessian of ~1/0.001 along s), is refused."""
    x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = StochasticLBFGS([x], line_search="none", damping=0.05)
    state = optimizer._state()
    s = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert not optimizer.remember(state, s, -0.049 * s)  # 0.05 - 0.049 would pass a test after the damping
    assert optimizer.remember(state, s, 0.001 * s)  # small positive curvature: stored, damped to 0.051
    assert float(state["y"][-1] @ s) == pytest.approx(0.051)
    direction = two_loop(s, state["s"], state["y"], optimizer.gamma(state))
    assert float(direction.norm()) <= 1 / 0.05  # |H g| <= |g| / damping

def test_same_batch_pairs_never_mix_two_batches():
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = StochasticLBFGS([x], lr=0.5, pairs="same-batch", max_iter=3, line_search="armijo", history_size=100)
    log, stored = [], []
    remember = optimizer.remember
    optimizer.remember = lambda state, s, y: stored.append((s, y)) or remember(state, s, y)
    for batch in range(6):
        optimizer.step(Batch(x, batch, log))
    assert len(stored) == 6 * 2  # two pairs a batch (3 iterations), none as a batch begins
    for s, y in stored:
        sources = [(a[0], b[0]) for a, b in zip(log, log[1:])
                   if torch.allclose(b[1] - a[1], s) and torch.allclose(b[2] - a[2], y)]
        assert sources and all(first == second for first, second in sources)


def test_backtracking_halves_until_the_loss_falls_enough():
    calls = []

    def loss_at(t):
        calls.append(t)
        return (t - 0.2) ** 2  # loss0 = 0.04, slope -0.4: Armijo holds for t <= ~0.4
    step, loss, trials = backtracking(loss_at, 0.04, -0.4, 2.0)
    assert calls == [2.0, 1.0, 0.5, 0.25] and step == 0.25 and trials == 4
    assert backtracking(lambda t: float("nan"), 1.0, -1.0, 1.0, max_trials=3) == (0.0, 1.0, 3)


def bn_model_and_objective(images, labels, optimizer_flags=()):
    from bnonly.models.resnet import build_model, freeze
    torch.manual_seed(0)
    model = build_model("resnet20").train()
    params = freeze(model, "bn")
    cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", *optimizer_flags])[0]
    optimizer = build_optimizer(cfg, params)
    objective = BatchObjective(model, params, [Piece(images, labels, 0)], [len(labels)], CPU, params, 1e-4)
    return model, optimizer, objective


def test_a_non_finite_step_is_rolled_back_and_the_memory_cleared():
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    model, optimizer, objective = bn_model_and_objective(images, labels, ["--lbfgs-variant", "batch"])
    result = quasi_newton_step(model, optimizer, objective)
    assert not result["rolled_back"] and result["images_forward_backward"] == 2 * 16
    assert result["images_forward_only"] >= 16 and result["passes"] == 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    poisoned = BatchObjective(model, objective.params, [Piece(images * float("nan"), labels, 0)], [16], CPU,
                              objective.params, 1e-4)
    assert quasi_newton_step(model, optimizer, poisoned)["rolled_back"]
    assert not optimizer.state
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_bn_statistics_move_once_per_step_whatever_the_line_search_does():
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    model, optimizer, objective = bn_model_and_objective(images, labels, ["--lbfgs-variant", "batch"])
    bn = model.bn1
    expected_mean = 0.9 * bn.running_mean + 0.1 * model.conv1(images).mean((0, 2, 3))
    result = quasi_newton_step(model, optimizer, objective)
    assert result["images_forward_backward"] + result["images_forward_only"] > 3 * 16  # several passes
    torch.testing.assert_close(bn.running_mean, expected_mean.detach())
    assert int(bn.num_batches_tracked) == 1


def test_optimizer_state_round_trips_through_a_weights_only_checkpoint():
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    problem = Quadratic(x)
    optimizer = StochasticLBFGS([x], lr=0.3, pairs="overlap", max_iter=1, line_search="none")
    for _ in range(3):
        optimizer.step(problem)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    twin_x = torch.nn.Parameter(x.detach().clone())
    twin = StochasticLBFGS([twin_x], lr=0.3, pairs="overlap", max_iter=1, line_search="none")
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    optimizer.step(problem)
    twin.step(Quadratic(twin_x))
    assert torch.equal(x, twin_x)


def test_multibatch_epoch_shares_half_of_each_batch_with_the_next(monkeypatch):
    """In train_one_epoch, each multibatch step's head is exactly the previous step's tail (same augmented
    images), an epoch's first step has none, and the settings of the run reach the objective."""
    from bnonly.training import engine
    from bnonly.models.resnet import build_model, freeze
    objectives = []
    real = engine.batch_objective
    monkeypatch.setattr(engine, "batch_objective", lambda *a, **k: objectives.append(real(*a, **k)) or objectives[-1])
    torch.manual_seed(0)
    model = build_model("resnet20")
    cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", "multibatch", "--lbfgs-batch-size", "16",
                      "--label-smoothing", "0.2", "--no-progress"])[0]
    optimizer = build_optimizer(cfg, freeze(model, "bn"))
    images, labels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10
    pipeline = ImageInputs((128.0,) * 3, (64.0,) * 3, "cpu")
    result = engine.train_one_epoch(model, optimizer, cfg, (images, labels), pipeline, torch.Generator().manual_seed(0),
                                    1, CPU)
    assert len(objectives) == 64 // 8  # 8 new images a step
    assert [o.part_sizes for o in objectives] == [[8]] + [[8, 8]] * 7 and not objectives[0].has_head
    for previous, current in zip(objectives, objectives[1:]):
        assert current.has_head and torch.equal(current.pieces[0].inputs, previous.pieces[-1].inputs)
        assert torch.equal(current.pieces[0].labels, previous.pieces[-1].labels)
    assert {o.label_smoothing for o in objectives} == {0.2}
    assert result["images_forward_backward"] == 8 + 7 * 16 and result["images_forward_only"] == 0
    assert len(optimizer.state[optimizer.param_groups[0]["params"][0]]["s"]) > 0  # overlap pairs were stored


def test_a_finite_loss_with_a_non_finite_gradient_takes_no_step_and_asks_for_a_rollback():
    x = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    class Broken:
        def gradient(self):
            return 1.0, torch.tensor([0.0, float("nan"), 1.0], dtype=torch.float64)
    optimizer = StochasticLBFGS([x], line_search="none", pairs="same-batch")
    assert math.isnan(optimizer.step(Broken()))
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))


def test_history_mode_reset_empties_the_batch_variants_memory_before_every_batch():
    from bnonly.training import engine
    from bnonly.models.resnet import build_model, freeze
    memories = []
    for mode in ("persist", "reset"):
        torch.manual_seed(0)
        model = build_model("resnet20")
        cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", "batch", "--lbfgs-batch-size", "16",
                          "--lbfgs-max-iter", "3", "--lbfgs-history-mode", mode, "--no-progress"])[0]
        optimizer = build_optimizer(cfg, freeze(model, "bn"))
        images, labels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10
        pipeline = ImageInputs((128.0,) * 3, (64.0,) * 3, "cpu")
        engine.train_one_epoch(model, optimizer, cfg, (images, labels), pipeline, torch.Generator().manual_seed(0), 1, CPU)
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        memories.append((len(state["s"]), state["batches"]))
    assert memories[0][0] > 2 and memories[1][0] <= 2  # reset keeps at most the last batch's 2 pairs
    assert memories[0][1] == memories[1][1] == 4  # the gradient statistics span every batch either way


@pytest.mark.parametrize("variant", ["multibatch", pytest.param("batch", marks=pytest.mark.slow),
                                     pytest.param("hvp", marks=pytest.mark.slow)])
def test_the_step_log_script_records_descending_steps_of_a_resumed_run(tmp_path, variant):
    """scripts/lbfgs_step_log.py resumes a copy of a finished L-BFGS run and writes one row per step; every
    step (no momentum) descends on its batch's gradient, and the run is untouched. Each pair source goes
    through the script's recording of the objective: overlap (multibatch), same-batch (batch), hvp."""
    import subprocess
    import sys

    from conftest import REPO, TINY, read_csv, run_train

    run = tmp_path / "lbfgs"
    trained = run_train(*TINY, "-t", "bn", "--optimizer", "lbfgs", "--lbfgs-variant", variant, "--lbfgs-batch-size",
                        "128", "--epochs", "1", "--save-dir", run)
    assert trained.returncode == 0, trained.stderr
    history = (run / "history.csv").read_text()
    out = tmp_path / "steps.csv"
    script = subprocess.run([sys.executable, "scripts/lbfgs_step_log.py", str(run), "--steps", "3", "--epochs", "4",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert script.returncode == 0, script.stderr
    rows = read_csv(out)
    assert len(rows) == 3
    cosines = [float(row["cos_step_neg_grad"]) for row in rows]
    searched = variant == "batch"  # its armijo search may reject every trial: a zero step, cosine 0
    assert all((0 <= c if searched else 0 < c) and c <= 1 + 1e-6 for c in cosines) and max(cosines) > 0
    for row in rows:
        assert float(row["step_norm"]) >= 0 and float(row["step_over_lr_grad"]) >= 0
        assert 0 < float(row["signal_to_noise"]) <= 1
    assert int(rows[-1]["pairs"]) >= 1
    assert (run / "history.csv").read_text() == history
