"""Log the steps of a stochastic L-BFGS run: resume a copy of it for N steps and write one CSV row per step.

    python scripts/lbfgs_step_log.py RUN_DIR --steps 120 --out steps.csv [--damping 0.05] [--epochs E]

The run folder is copied into a temporary folder first, so the run itself is not touched (train.py's
"stopped by SIGTERM ... continue with" line names that copy, which is gone when the script ends).

Columns: the step, the batch's loss at the step's start, |s| (the step's length in parameter space), the
norm of the running mean gradient, the newest pair's scale s.y / y.y, the smallest and largest curvature
y.s / s.s among the stored pairs, the number of pairs, the cosine between s and the batch's negative
gradient at the step's start, |s| / (lr |g|) (1 for a plain gradient step of the same lr), and the
gradients' signal-to-noise ratio across batches (StochasticLBFGS.step_scale). For the `batch` variant s
spans all the step's iterations; a step the line search rejects logs a cosine of 0; with --lbfgs-momentum
the cosine may be negative (the step follows the average, not this batch's gradient).

`--damping` replaces the run's damping from the first step on (the pairs already stored keep theirs until
they age out). docs/results.md (why the multibatch run collapsed) used it on the collapsed run's checkpoint.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bnonly.optim import quasi_newton  # noqa: E402
from bnonly.training import trainer as train  # noqa: E402


class RecordingObjective:
    """The step's objective, keeping the first gradient it hands out (the batch's, at the step's start)."""

    def __init__(self, inner):
        self.inner, self.first_gradient = inner, None

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("gradient", "part_gradients"):
            return attr

        def recorded(*args):
            result = attr(*args)
            if self.first_gradient is None:
                self.first_gradient = result[1].detach().clone()
            return result

        return recorded


def logging_step(out, steps: int, damping):
    """A StochasticLBFGS.step that also writes a row to `out`, and stops the run (SIGTERM: it saves and
    exits) after `steps` steps."""
    original = quasi_newton.StochasticLBFGS.step
    count = [0]

    def step(self, objective):
        if damping is not None:
            self.param_groups[0]["damping"] = damping
        before = quasi_newton.flat([p.detach() for p in self._params]).clone()
        if not hasattr(objective, "gradient"):
            objective = quasi_newton.ClosureObjective(objective, self._params)
        objective = RecordingObjective(objective)
        loss = original(self, objective)
        after = quasi_newton.flat([p.detach() for p in self._params])
        state = self._state()
        s, y = state["s"].double(), state["y"].double()
        curvatures = ((s * y).sum(1) / (s * s).sum(1)).tolist() or [float("nan")]
        step_vector, grad = (after - before).double(), objective.first_gradient.double()
        cosine = float(-(step_vector @ grad) / (step_vector.norm() * grad.norm()).clamp_min(1e-30))
        ratio = float(step_vector.norm() / (self.param_groups[0]["lr"] * grad.norm()).clamp_min(1e-30))
        out.write(f"{count[0]},{loss:.6f},{float(step_vector.norm()):.6e},{float(state['grad_mean'].norm()):.6e},"
                  f"{self.gamma(state):.6e},{min(curvatures):.6e},{max(curvatures):.6e},{len(s)},"
                  f"{cosine:.4f},{ratio:.4e},{self.step_scale(state):.4e}\n")
        out.flush()
        count[0] += 1
        if count[0] == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder of a stochastic L-BFGS run (with its checkpoint.pt)")
    parser.add_argument("--steps", type=int, default=120, help="steps to log")
    parser.add_argument("--out", default="lbfgs_steps.csv", help="CSV file to write")
    parser.add_argument("--damping", type=float, default=None, help="use this damping instead of the run's")
    parser.add_argument("--epochs", type=int, default=None, help="extend a finished run to this many epochs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, open(args.out, "w") as out:
        copy = os.path.join(scratch, "run")
        shutil.copytree(args.run, copy)
        out.write("step,loss,step_norm,mean_grad_norm,gamma,min_curvature,max_curvature,pairs,"
                  "cos_step_neg_grad,step_over_lr_grad,signal_to_noise\n")
        quasi_newton.StochasticLBFGS.step = logging_step(out, args.steps, args.damping)
        try:
            extend = ["--epochs", str(args.epochs)] if args.epochs else []
            status = train.main(["--resume", copy, "--no-progress", *extend])
        except SystemExit as stop:
            status = stop.code
    return 0 if status in (0, 128 + signal.SIGTERM) else status


if __name__ == "__main__":
    sys.exit(main())
