"""Log the steps of a stochastic L-BFGS run: resume a copy of it for N steps and write one CSV row per step.

    python scripts/lbfgs_step_log.py RUN_DIR --steps 120 --out steps.csv [--damping 0.05] [--epochs E]

The run folder is copied into a temporary folder first, so the run itself is not touched (train.py's
"stopped by SIGTERM ... continue with" line names that copy, which is gone when the script ends). Columns: the
step, the batch's loss at the step's start, |s| (the step's length in parameter space), the norm of the
running mean gradient, the newest pair's scale s.y / y.y, and the smallest and largest curvature
y.s / s.s among the stored pairs. `--damping` replaces the run's damping from the first step on (the
pairs already stored keep theirs until they age out). docs/results.md (why the multibatch run
collapsed) used it on the collapsed run's checkpoint.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import quasi_newton  # noqa: E402
import train  # noqa: E402


def logging_step(out, steps: int, damping):
    """A StochasticLBFGS.step that also writes a row to `out`, and stops the run (SIGTERM: it saves and
    exits) after `steps` steps."""
    original = quasi_newton.StochasticLBFGS.step
    count = [0]

    def step(self, objective):
        if damping is not None:
            self.param_groups[0]["damping"] = damping
        before = quasi_newton.flat([p.detach() for p in self._params]).clone()
        loss = original(self, objective)
        after = quasi_newton.flat([p.detach() for p in self._params])
        state = self._state()
        s, y = state["s"].double(), state["y"].double()
        curvatures = ((s * y).sum(1) / (s * s).sum(1)).tolist() or [float("nan")]
        out.write(f"{count[0]},{loss:.6f},{float((after - before).norm()):.6e},{float(state['grad_mean'].norm()):.6e},"
                  f"{self.gamma(state):.6e},{min(curvatures):.6e},{max(curvatures):.6e},{len(s)}\n")
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
        out.write("step,loss,step_norm,mean_grad_norm,gamma,min_curvature,max_curvature,pairs\n")
        quasi_newton.StochasticLBFGS.step = logging_step(out, args.steps, args.damping)
        try:
            extend = ["--epochs", str(args.epochs)] if args.epochs else []
            status = train.main(["--resume", copy, "--no-progress", *extend])
        except SystemExit as stop:
            status = stop.code
    return 0 if status in (0, 128 + signal.SIGTERM) else status


if __name__ == "__main__":
    sys.exit(main())
