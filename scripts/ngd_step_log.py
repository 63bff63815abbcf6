"""Log the steps of an --optimizer ngd run: train.py with the given flags, one CSV row per step.

    python scripts/ngd_step_log.py --out steps.csv --every 20 -- -t bn --optimizer ngd --epochs 2 [flags]

Columns: the step, the damping λ, the cosine between the preconditioned direction d = (F + λI)^-p g and
the batch gradient g (1: a gradient step; near 0: the curvature turns the step away from -g), |g|, |d|;
on refresh steps with a closure ρ = actual / predicted loss change on the step's own batch; and every
`--every` steps the averaged Fisher's spectrum: its largest eigenvalue, its 50th and 1st percentile and
smallest, trace / size, and the condition numbers of F + λI and of F alone (eigenvalues clamped at 1e-12).
The run itself is an ordinary run folder (give --save-dir).
"""

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bnonly.optim.natural_gradient import NaturalGradient  # noqa: E402
from bnonly.training import trainer as train  # noqa: E402

COLUMNS = ["step", "damping", "cosine", "grad_norm", "direction_norm", "rho", "eig_max", "eig_p50", "eig_p1",
           "eig_min", "eig_mean", "cond_damped", "cond_fisher"]


def spectrum(optimizer: NaturalGradient) -> dict:
    values = torch.cat([torch.linalg.eigvalsh(block.double()).reshape(-1) for block in optimizer.fisher()])
    damping = float(optimizer.state[optimizer.modules[0].weight]["damping"])
    top, low = float(values.max()), float(values.min())
    return {"eig_max": top, "eig_p50": float(values.quantile(0.5)), "eig_p1": float(values.quantile(0.01)),
            "eig_min": low, "eig_mean": float(values.mean()),
            "cond_damped": (top + damping) / max(low + damping, 1e-12), "cond_fisher": top / max(low, 1e-12)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--every", type=int, default=20, help="steps between spectra")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's flags")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    original = NaturalGradient.step
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()

        def step(self, closure=None, loss=None):
            grad = torch.cat([p.grad.reshape(-1) for m in self.modules for p in (m.weight, m.bias)
                              if p.grad is not None])
            before = torch.cat([p.detach().reshape(-1).clone() for m in self.modules for p in (m.weight, m.bias)])
            result = original(self, closure, loss)
            after = torch.cat([p.detach().reshape(-1) for m in self.modules for p in (m.weight, m.bias)])
            row = {"step": self.last["step"], "damping": self.last["damping"], "cosine": float(self.last["cosine"]),
                   "grad_norm": float(grad.norm()), "direction_norm": float((after - before).norm()),
                   "rho": self.last.get("rho") if "rho" in self.last else ""}
            self.last.pop("rho", None)
            if self.last["step"] % args.every == 1 or args.every == 1:
                row.update(spectrum(self))
            writer.writerow(row)
            fh.flush()
            return result

        NaturalGradient.step = step
        try:
            return train.main(["--optimizer", "ngd", *train_args])
        finally:
            NaturalGradient.step = original


if __name__ == "__main__":
    sys.exit(main())
