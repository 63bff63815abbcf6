"""--tensorboard: a run's curves as TensorBoard event files in RUN_DIR/tensorboard (view them with
`tensorboard --logdir RUN_DIR`).

The step of every event is the number of training images seen since the run began (epochs x training
images, plus the images of the epoch so far), so runs with other batch sizes or optimizers line up on one
axis. A resumed run drops the events written after its checkpoint (TensorBoard's purge step) and appends
the rest, so no step is written twice. The trainer makes a log on rank 0 only.
"""

import json
import os

import numpy as np

FOLDER = "tensorboard"
# history.csv column -> TensorBoard tag, in the order they are written
EPOCH_TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc",
              "test_loss": "test/loss", "test_acc": "test/acc", "lr": "lr", "images_per_second": "speed/images_per_second",
              "passes": "compute/passes", "images_forward_backward": "compute/images_forward_backward",
              "images_forward_only": "compute/images_forward_only"}
DISABLED_TAG = "bn/disabled_fraction"  # fraction of BatchNorm channels with |gamma| below analysis's threshold


class TensorBoardLog:
    """The event writer of one run. `images` is the number of training images per epoch; `resumed_at` the
    step (images seen) where this process takes over, 0 for a new run."""

    def __init__(self, run_dir: str, settings: dict, images: int, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is an optional extra
        self.images = images
        self.writer = SummaryWriter(os.path.join(run_dir, FOLDER), purge_step=resumed_at + 1 if resumed_at else None)
        text = json.dumps(settings, indent=2, default=str)
        title = "settings" + (f" (resumed after {resumed_at:,} images)" if resumed_at else "")
        self.writer.add_text("config", f"{title}\n\n    " + text.replace("\n", "\n    "), resumed_at)

    def epoch(self, row: dict, gamma: dict) -> None:
        """One history.csv row, and the BatchNorm gamma/beta of each stage (analysis.gamma_stats)."""
        step = int(row["epoch"]) * self.images
        for column, tag in EPOCH_TAGS.items():
            if column in row:
                self.writer.add_scalar(tag, float(row[column]), step)
        self.writer.add_scalar(DISABLED_TAG, float(gamma["overall"]), step)
        for stage, values in gamma["stages"].items():
            for name in ("gamma", "beta"):
                if values[name]:
                    self.writer.add_histogram(f"{name}/{stage}", np.asarray(values[name]), step)
        self.writer.flush()

    def running(self, epoch: int, images_done: int, loss: float, acc: float) -> None:
        """The train loss and accuracy averaged over the epoch so far (every --print-freq steps)."""
        step = (epoch - 1) * self.images + images_done
        self.writer.add_scalar("running/train_loss", loss, step)
        self.writer.add_scalar("running/train_acc", acc, step)

    def close(self) -> None:
        self.writer.close()
