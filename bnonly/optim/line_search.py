"""Step lengths for the stochastic quasi-Newton optimizers (quasi_newton.py): a backtracking line search.

torch.optim.LBFGS keeps its own strong-Wolfe search (the `torch` variant); this module is the one the
stochastic variants share. It only sees a function of the step length, so it knows nothing of models.
"""

import math

ARMIJO_C1 = 1e-4  # sufficient decrease: the loss must fall by at least c1 x the linear prediction
SHRINK = 0.5  # each rejected trial halves the step
MAX_TRIALS = 10  # 2**-9 of the first step is the smallest tried


def backtracking(loss_at, loss0: float, slope: float, step: float, c1: float = ARMIJO_C1, shrink: float = SHRINK,
                 max_trials: int = MAX_TRIALS) -> tuple:
    """The first of step, step*shrink, step*shrink**2, ... whose loss meets Armijo's condition
    loss_at(t) <= loss0 + c1 * t * slope, where slope = g.d < 0 is the directional derivative at t = 0.

    `loss_at(t)` evaluates the loss at the point t along the direction (a forward pass on the same batch).
    Returns (t, loss at t, trials); t = 0.0 and loss0 when no trial met the condition (a non-finite loss
    never does), so the caller takes no step rather than a bad one.
    """
    t = step
    for trial in range(1, max_trials + 1):
        loss = loss_at(t)
        if math.isfinite(loss) and loss <= loss0 + c1 * t * slope:
            return t, loss, trial
        t *= shrink
    return 0.0, loss0, max_trials
