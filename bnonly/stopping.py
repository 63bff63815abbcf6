"""Stopping a run cleanly: SIGINT and SIGTERM ask the epoch loop to stop after the current step, which
then writes a checkpoint and says how to continue."""

import signal

SYNC_EVERY = 10  # under torchrun, training steps between the ranks' checks for a signal or a due checkpoint


class RunStopped(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum: int, save_dir: str, where: str, world=None):  # world: distributed.World
        launcher = f"torchrun --nproc_per_node={world.local_size}" if world is not None and world.active else "python"
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}; checkpoint saved; "
                         f"continue with: {launcher} train.py --resume {save_dir}")
        self.signal = signum


class GracefulStop:
    """While active, SIGINT/SIGTERM ask the epoch loop to stop after the current step; a second SIGINT
    stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
