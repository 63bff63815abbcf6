"""Train a CIFAR ResNet with all, only BatchNorm, or no parameters trainable.

    python train.py -t bn --use-lbfgs True
    python train.py -t all --epochs 160 --save-dir runs/full
    python train.py --resume runs/full -e

Writes config.json, history.csv, checkpoint.pt and summary.json into --save-dir.
"""

import dataclasses
import glob
import os
import platform
import random
import signal
import sys
import time
from contextlib import closing, nullcontext

import numpy as np
import torch

from bnonly import distributed
from bnonly.runs.analysis import gamma_stats
from bnonly.distributed import World, any_rank, broadcast_value, world_from_env
from bnonly.config import STREAMED_DATASETS, Config, ConfigError, fail, parse_args, to_dict
from bnonly.phases import phase_at, phase_settings
from bnonly.data.datasets import input_pipeline, is_audio, load_dataset
from bnonly.training.compute import NATIVE_CPU_FLAGS, Compute, resolve_precision
from bnonly.optim.factories import build_optimizer, build_scheduler
from bnonly.training.engine import (TrainingDiverged, all_finite, evaluate, evaluate_adapted, job_sums, recalibrate_bn,
                                    step_images, train_one_epoch)
from bnonly.models import ModelError
from bnonly.models.freezing import count_parameters, freeze, select_parameters, untrainable
from bnonly.models.pretrained import load_pretrained
from bnonly.models.registry import build_model
from bnonly.training.resuming import restore, resume_config, resuming_in_place
from bnonly.runs.runfiles import (RUN_FILES, check_save_dir, checkpoint_path, load_checkpoint, rng_state,
                                  save_checkpoint, summarize, write_history, write_json)
from bnonly.stopping import SYNC_EVERY, GracefulStop, RunStopped
from bnonly.runs.tensorboard_log import TensorBoardLog


def resolve_device(name: str, world: World = World()) -> torch.device:
    """auto: cuda, then mps, then cpu; an accelerator that is not there is an error. Under torchrun,
    auto and cuda mean this process's GPU, cuda:LOCAL_RANK."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if world.active and torch.cuda.is_available() and name in ("auto", "cuda"):
        count = torch.cuda.device_count()  # 1 when the launcher gives each process its own GPU
        if count > 1 and world.local_rank >= count:
            raise ConfigError(f"torchrun started {world.local_size} processes on this node but it has {count} "
                              f"GPUs; use --nproc_per_node={count} or fewer")
        return torch.device("cuda", world.local_rank if count > 1 else 0)
    if world.active and (name.startswith("cuda:") or name == "mps" or (name == "auto" and has_mps)):
        raise ConfigError(f"--device {name} under torchrun: use --device cuda (each process takes cuda:LOCAL_RANK) "
                          f"or --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def default_save_dir(cfg: Config) -> str:
    arch = cfg.arch.replace(":", "-")  # torchvision:resnet50: no ':' in a path (Windows, scp, tensorboard's name:dir)
    return os.path.join("runs", f"{arch}_{cfg.optimizer}_{cfg.trainable}_{time.strftime('%Y%m%d-%H%M%S')}")


def epoch_line(row: dict, epochs: int) -> str:
    """One fixed-column line per epoch."""
    parts = [f"epoch {row['epoch']:>4}/{epochs}", f"lr {row['lr']:.2e}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}"]
    for split in ("val", "test"):
        if f"{split}_loss" in row:
            parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_acc']:6.2f}"
                         + (f" (adapted {row[f'{split}_adapted_acc']:6.2f})" if f"{split}_adapted_acc" in row else ""))
    parts.append(f"{row['epoch_seconds']:7.1f}s {row['images_per_second']:7.0f} img/s {row['passes']:>6} passes")
    return " | ".join(parts)


def run_epoch(epoch: int, cfg: Config, ex: "Experiment", after_step=None) -> dict:
    """Train one epoch (or its rest, after a mid-epoch checkpoint), evaluate every held-out split, step the
    schedule; returns the history row."""
    start = time.perf_counter()
    lr = ex.optimizer.param_groups[0]["lr"] if ex.optimizer is not None else 0.0
    progress, ex.progress = ex.progress, None
    train = train_one_epoch(ex.train_model, ex.optimizer, cfg, ex.splits["train"], ex.pipeline, ex.generator, epoch,
                            ex.compute, ex.scaler, progress, after_step, ex.no_decay, ex.world)
    row = {"epoch": epoch, **({"phase": phase_at(cfg, epoch)[1]} if cfg.phases else {}), "lr": lr,
           "train_loss": train["loss"], "train_acc": train["acc"]}
    eval_start = time.perf_counter()
    distributed.average_bn_statistics(ex.model, ex.world)  # every rank evaluates (and saves) the same model
    if cfg.bn_recalibrate:
        recalibrate_bn(ex.model, ex.splits["train"][0], ex.pipeline, cfg.bn_recalibrate, ex.compute)
    for split in ("val", "test"):
        if split in ex.splits:
            metrics = evaluate(ex.model, ex.splits[split], ex.pipeline, ex.compute, world=ex.world)
            row[f"{split}_loss"], row[f"{split}_acc"] = metrics["loss"], metrics["acc"]
            row[f"{split}_acc5"] = metrics["acc5"]
    for split in ("val", "test") if cfg.bn_adapt else ():
        if split in ex.splits:
            metrics = evaluate_adapted(ex.model, ex.splits[split], ex.pipeline, ex.compute, ex.world)
            row[f"{split}_adapted_loss"], row[f"{split}_adapted_acc"] = metrics["loss"], metrics["acc"]
    if ex.scheduler is not None:
        ex.scheduler.step()
    end = time.perf_counter()
    row.update(epoch_seconds=end - start, eval_seconds=end - eval_start,
               images_per_second=train["images_per_second"], passes=train["passes"], rollbacks=train["rollbacks"],
               images_forward_backward=train["images_forward_backward"], images_forward_only=train["images_forward_only"])
    return row


def main(argv=None) -> int:
    world = world_from_env()
    rank = f"[rank {world.rank}] " if world.active else ""
    try:
        status = run(*parse_args(argv), world)
        distributed.stop(world)
        return status
    except ConfigError as e:
        fail(rank + str(e))
    except RunStopped as e:
        fail(str(e), status=128 + e.signal) if world.main else sys.exit(128 + e.signal)
    except TrainingDiverged as e:
        fail(f"{rank}{e}; lower --lr (the last good checkpoint is kept)", status=3)
    except KeyboardInterrupt:  # every run file is replaced atomically: the last saved checkpoint is intact
        fail(f"{rank}interrupted; continue from the last saved checkpoint with --resume RUN_DIR", status=130)


@dataclasses.dataclass
class Experiment:
    """Everything a run trains and measures, built from the settings (and restored from a checkpoint)."""
    model: torch.nn.Module
    params: list  # the trainable parameters
    optimizer: object
    scheduler: object
    generator: torch.Generator  # data order and augmentation
    compute: Compute  # device, precision, memory layout
    scaler: object  # fp16 loss scaling (None otherwise)
    splits: dict  # name -> MemorySplit (images (N,3,H,W) uint8, labels (N,) int64) on the device, or StreamedSplit
    pipeline: object  # data.ImageInputs or audio.AudioInputs: augmentation and normalisation on the device
    normalization: dict  # its mean and std (per channel or mel bin) as plain lists, for the checkpoint
    num_classes: int
    history: list
    start_epoch: int
    world: World  # this process's place in a torchrun job
    train_model: torch.nn.Module  # `model`, or DistributedDataParallel around it under torchrun
    phase: int  # index into --phases (0 without phases) of the optimizer and schedule
    no_decay: list  # trainable parameters without weight decay
    progress: dict = None  # the partial first epoch of a mid-epoch checkpoint


def on_main(world: World, action) -> None:
    """Run `action` on rank 0 only; a ConfigError it raises is raised on every rank."""
    error = None
    if world.main:
        try:
            action()
        except ConfigError as e:
            error = str(e)
    error = broadcast_value(world, error)
    if error is not None:
        raise ConfigError(error)


def run(cfg: Config, given: set, world: World = World()) -> int:
    """Check everything that can be checked, then evaluate or train; returns the exit status."""
    checkpoint = None
    if cfg.resume:
        path = checkpoint_path(cfg.resume)
        checkpoint = load_checkpoint(path)
        cfg = resume_config(checkpoint, cfg, given)
        if "save_dir" not in given:
            cfg.save_dir = os.path.dirname(os.path.abspath(path))
    device = resolve_device(cfg.device, world)
    if world.active and cfg.dataset in STREAMED_DATASETS and cfg.optimizer == "lbfgs" and cfg.lbfgs_variant != "torch":
        raise ConfigError(f"--dataset {cfg.dataset} under torchrun: each rank decodes only its part of a batch, "
                          f"and the {cfg.lbfgs_variant} L-BFGS variant needs the whole batch on every rank; use "
                          f"SGD, --lbfgs-variant torch, or one process")
    if checkpoint is not None and not cfg.evaluate and checkpoint.get("world_size", 1) != world.size:
        raise ConfigError(f"--resume: the run was made by {checkpoint.get('world_size', 1)} process(es), this is "
                          f"{world.size}; resume with as many (torchrun --nproc_per_node), or -e to evaluate")
    distributed.start(world, device)
    if not cfg.evaluate:
        cfg.save_dir = cfg.save_dir or broadcast_value(world, default_save_dir(cfg))
        in_place = resuming_in_place(cfg, checkpoint)
        on_main(world, lambda: check_save_dir(cfg.save_dir, cfg.overwrite, resuming=in_place))
    experiment = build_experiment(cfg, device, checkpoint, world)
    if cfg.bn_adapt and not {"val", "test"} & set(experiment.splits):
        raise ConfigError("--bn-adapt needs a held-out split to adapt to: give --val-groups or --val-split, or "
                          "data with a test/ folder")
    if cfg.evaluate:
        if "test" not in experiment.splits:
            raise ConfigError(f"--evaluate: the {cfg.dataset} data in {cfg.data_dir} has no test split")
        metrics = evaluate(experiment.model, experiment.splits["test"], experiment.pipeline, experiment.compute,
                           world=world)
        if world.main:
            print(f"test_loss {metrics['loss']:.4f} test_acc {metrics['acc']:.2f} test_acc5 {metrics['acc5']:.2f}")
        if cfg.bn_adapt:
            metrics = evaluate_adapted(experiment.model, experiment.splits["test"], experiment.pipeline,
                                       experiment.compute, world)
            if world.main:
                print(f"test_adapted_loss {metrics['loss']:.4f} test_adapted_acc {metrics['acc']:.2f}")
        return 0
    on_main(world, lambda: prepare_save_dir(cfg, experiment.compute, in_place, world))
    return train(cfg, experiment, device)


def build_experiment(cfg: Config, device: torch.device, checkpoint, world: World = World()) -> Experiment:
    """Seed, load the data, build the model, optimizer and schedule; restore them when resuming."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    dataset = distributed.in_turn(world, lambda: load_dataset(cfg))  # one download / decode, then cache reads
    precision = broadcast_value(world, run_precision(cfg, device, checkpoint))  # rank 0's CPU decides for all
    compute = Compute(device, precision, cfg.channels_last)
    model = compute.place(new_model(cfg, dataset.num_classes, checkpoint, world))
    if cfg.sync_bn and world.active:
        distributed.convert_sync_batchnorm(model, device)
    start_epoch = checkpoint["epoch"] + 1 if checkpoint is not None else 1
    phase, mode, epochs = phase_at(cfg, start_epoch)
    params, no_decay, optimizer, scheduler = setup_phase(phase_settings(cfg, phase), model, mode, epochs,
                                                         world)  # before load_state_dict
    scaler = compute.grad_scaler()
    normalization = {"mean": list(dataset.mean), "std": list(dataset.std)}
    history, progress = [], None
    if checkpoint is not None:
        same_phase = checkpoint.get("phase", 0) == phase  # else the saved optimizer belongs to the last phase
        normalization = restore(checkpoint, model, optimizer if same_phase else None,
                                scheduler if same_phase else None, scaler, None if cfg.evaluate else generator)
        history = list(checkpoint.get("history", []))
        progress = checkpoint.get("progress")
        if progress is not None and not cfg.evaluate:
            progress = {k: v.to(device) if torch.is_tensor(v) else v for k, v in progress.items()}
            if not world.main:  # the saved sums are the job's: rank 0 carries them on, the others start at 0
                progress.update(loss_sum=torch.zeros_like(progress["loss_sum"]),
                                correct=torch.zeros_like(progress["correct"]), images=0)
    pipeline = input_pipeline(cfg, normalization, device)
    splits = {name: split.to(device) for name, split in dataset.splits.items()}
    if cfg.compile:
        model.compile(mode=cfg.compile_mode)  # in place: the state_dict keys stay those of the plain model
    train_model = distributed.wrap(model, world, device)
    return Experiment(model, params, optimizer, scheduler, generator, compute, scaler, splits, pipeline, normalization,
                      dataset.num_classes, history, start_epoch, world, train_model, phase, no_decay, progress)


def new_model(cfg: Config, num_classes: int, checkpoint, world: World) -> torch.nn.Module:
    """The model -a names (on the CPU) with --init-from's weights, but not when resuming (the checkpoint's
    win), checked against every mode it will train in; what cannot be built or loaded is a ConfigError."""
    try:
        model = build_model(cfg.arch, num_classes, cfg.width, cfg.bn_init, cfg.n_mels if is_audio(cfg) else 3)
    except ModelError as e:
        raise ConfigError(f"-a {cfg.arch}: {e}") from None
    if cfg.init_from and checkpoint is None:
        try:
            notes = load_pretrained(model, os.path.expanduser(cfg.init_from))
        except ModelError as e:
            raise ConfigError(f"--init-from {cfg.init_from}: {e}") from None
        for note in notes if world.main else ():
            print(f"note: --init-from {cfg.init_from}: {note}", file=sys.stderr)
    for mode in dict.fromkeys(phase[0] for phase in cfg.phases or [[cfg.trainable, cfg.epochs]]):
        if untrainable(model, mode):
            raise ConfigError(f"{'--phases' if cfg.phases else '-t'} {mode}: {cfg.arch} {untrainable(model, mode)}, "
                              f"so {mode} would train nothing; choose another model or mode")
    return model


def run_precision(cfg: Config, device: torch.device, checkpoint) -> str:
    """The arithmetic of this run: --precision, with `auto` resolved for the device and optimizer. A resumed
    run keeps what it started with, on any machine and device, and even where `auto` has come to mean
    another precision since (runs from before the checkpoint recorded it were all fp32)."""
    if checkpoint is not None and cfg.precision == "auto":
        return checkpoint.get("resolved_precision", "fp32")
    return resolve_precision(cfg.precision, device, cfg.optimizer)


def setup_phase(cfg: Config, model, mode: str, epochs: int, world: World = World(), old=None) -> tuple:
    """Freeze the model to `mode` and build a fresh optimizer (after `old`, the last phase's) and an
    `epochs`-long schedule for it; returns (trainable parameters, those without weight decay, optimizer,
    scheduler)."""
    if hasattr(old, "remove_hooks"):  # ngd's per-sample hooks belong to the optimizer that ends here
        old.remove_hooks()
    params = freeze(model, mode, cfg.seed)
    bn = {id(p) for p in select_parameters(model, "bn")}
    no_decay = [] if cfg.bn_weight_decay else [p for p in params if id(p) in bn]
    optimizer = build_optimizer(cfg, params, no_decay, model, world)
    return params, no_decay, optimizer, build_scheduler(cfg, optimizer, epochs)


def enter_phase(cfg: Config, ex: Experiment, epoch: int) -> None:
    """At the first epoch of a new --phases phase: refreeze, new optimizer and schedule, one line."""
    index, mode, epochs = phase_at(cfg, epoch)
    if index == ex.phase:
        return
    settings = phase_settings(cfg, index)
    ex.params, ex.no_decay, ex.optimizer, ex.scheduler = setup_phase(settings, ex.model, mode, epochs, ex.world,
                                                                     ex.optimizer)
    ex.train_model = distributed.wrap(ex.model, ex.world, ex.compute.device)  # DDP follows requires_grad
    ex.phase = index
    if ex.world.main:
        print(f"phase {index + 1}/{len(cfg.phases)} from epoch {epoch}: {mode} for {epochs} epochs, "
              f"{sum(p.numel() for p in ex.params):,} parameters trainable, new {settings.optimizer} optimizer "
              f"(lr {settings.lr:g}) and "
              f"schedule", flush=True)


def train(cfg: Config, ex: Experiment, device: torch.device) -> int:
    """The epoch loop: train, evaluate, and write the run files after every epoch. Under torchrun rank 0
    prints and writes; decisions to save or stop are taken by all ranks together."""
    world = ex.world
    say = print if world.main else (lambda *args, **kwargs: None)
    cfg.no_progress = cfg.no_progress or not world.main
    total, trainable = count_parameters(ex.model), sum(p.numel() for p in ex.params)
    mode = phase_at(cfg, ex.start_epoch)[1] + (f", phase {ex.phase + 1} of {len(cfg.phases)}" if cfg.phases else "")
    processes = f", {world.size} processes x batch {cfg.batch_size}" if world.active else ""
    say(f"{cfg.arch} x{cfg.width}: {trainable:,} of {total:,} parameters trainable ({mode}), "
        f"{phase_settings(cfg, ex.phase).optimizer}, {len(ex.splits['train'].labels):,} training {'clips' if is_audio(cfg) else 'images'}, device {device}{processes} "
        f"({ex.compute.precision}{', channels-last' if cfg.channels_last and not is_audio(cfg) else ''}), "
        f"run folder {cfg.save_dir}", flush=True)
    if "test" not in ex.splits and "val" not in ex.splits:
        say("note: no test split and no --val-split: only training metrics are recorded", file=sys.stderr)
    precision = ex.compute.precision
    if ex.compute.emulated():
        say(f"note: this CPU has no {precision} instructions ({' or '.join(NATIVE_CPU_FLAGS[precision])}), so torch "
            f"emulates it, many times slower than fp32 (a BN-only step: 14-16x on an AVX2-only CPU); "
            f"--precision fp32 is faster", file=sys.stderr)
    checkpoint_file = os.path.join(cfg.save_dir, "checkpoint.pt")
    last_save, saved_epoch = time.monotonic(), None
    board = open_board(cfg, ex) if cfg.tensorboard and world.main else None

    def save(epoch: int, progress=None) -> None:
        nonlocal last_save, saved_epoch
        if progress is not None and world.active:  # within an epoch: the job's sums and one set of BN statistics
            loss_sum, correct, images = job_sums(progress, world)
            progress = {**progress, "loss_sum": loss_sum, "correct": correct, "images": images}
            distributed.average_bn_statistics(ex.model, world)
        if world.main:
            save_checkpoint(checkpoint_file, checkpoint_state(cfg, ex, epoch, progress))
        last_save, saved_epoch = time.monotonic(), (epoch if progress is None else None)

    with GracefulStop() as stop, closing(board) if board is not None else nullcontext():
        def stopping() -> bool:  # a signal reached any rank (the same answer everywhere)
            return any_rank(world, stop.signal is not None)[0]

        for epoch in range(ex.start_epoch, cfg.epochs + 1):
            def after_step(progress, epoch=epoch):
                """TensorBoard's running loss; mid-epoch checkpoint when a signal came or --checkpoint-minutes passed."""
                if board is not None and cfg.print_freq and progress["step"] % cfg.print_freq == 0:
                    seen = max(progress["images"], 1)
                    board.running(epoch, images_done(cfg, ex, progress), progress["loss_sum"].item() / seen,
                                  100.0 * progress["correct"].item() / seen)
                if world.active and progress["step"] % SYNC_EVERY:
                    return  # the ranks agree on saving or stopping every SYNC_EVERY steps
                due = bool(cfg.checkpoint_minutes) and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                signalled, due = any_rank(world, stop.signal is not None, due)
                if not signalled and not due:
                    return
                if any_rank(world, not all_finite([progress["loss_sum"], *ex.params]))[0]:
                    raise TrainingDiverged(f"the training loss or parameters are not finite in epoch {epoch}")
                save(epoch - 1, {**progress, "epoch": epoch})
                if signalled:
                    raise RunStopped(stop.signal or signal.SIGTERM, cfg.save_dir,
                                     f"in epoch {epoch} after batch {progress['step']}", world)

            enter_phase(cfg, ex, epoch)
            row = run_epoch(epoch, phase_settings(cfg, ex.phase), ex, after_step)
            say(epoch_line(row, cfg.epochs), flush=True)
            if not np.isfinite(row["train_loss"]):
                raise TrainingDiverged(f"the training loss is not finite at epoch {epoch}")
            ex.history.append(row)
            if world.main:
                write_history(os.path.join(cfg.save_dir, "history.csv"), ex.history)
            if epoch % cfg.save_every == 0 or epoch == cfg.epochs or stopping():
                save(epoch)
            if world.main:
                gamma = gamma_stats(ex.model.state_dict())
                write_json(os.path.join(cfg.save_dir, "summary.json"),
                           summarize(ex.history, sum(p.numel() for p in ex.params), total, world_size=world.size,
                                     gamma=gamma))
                if board is not None:
                    board.epoch(row, gamma)
            if epoch < cfg.epochs and stopping():
                if saved_epoch != epoch:  # the signal came while this epoch's files were being written
                    save(epoch)
                raise RunStopped(stop.signal or signal.SIGTERM, cfg.save_dir, f"after epoch {epoch}", world)
    return 0


def open_board(cfg: Config, ex: Experiment) -> TensorBoardLog:
    """The TensorBoard log of this run, taking over after the images the checkpoint had seen."""
    images = len(ex.splits["train"].labels)
    seen = (ex.start_epoch - 1) * images + (images_done(cfg, ex, ex.progress) if ex.progress else 0)
    return TensorBoardLog(cfg.save_dir, to_dict(cfg), images, seen)


def images_done(cfg: Config, ex: Experiment, progress: dict) -> int:
    """Training images of the epoch that the job has stepped through (all ranks)."""
    lbfgs = cfg.optimizer == "lbfgs" and ex.optimizer is not None
    return min(progress["step"] * step_images(cfg, lbfgs) * ex.world.size, len(ex.splits["train"].labels))


def checkpoint_state(cfg: Config, ex: Experiment, epoch: int, progress=None) -> dict:
    """The one dict saved as checkpoint.pt (plain tensors and containers only); `epoch` is the last
    completed epoch, `progress` the state of the next one when saved within it."""
    return {"model": ex.model.state_dict(), "optimizer": ex.optimizer.state_dict() if ex.optimizer else None,
            "scheduler": ex.scheduler.state_dict() if ex.scheduler else None,
            "scaler": ex.scaler.state_dict() if ex.scaler is not None else None, "epoch": epoch,
            "rng": rng_state(ex.generator), "config": to_dict(cfg), "normalization": ex.normalization,
            "history": ex.history, "num_classes": ex.num_classes, "progress": progress, "phase": ex.phase,
            "world_size": ex.world.size, "resolved_precision": ex.compute.precision}


def prepare_save_dir(cfg: Config, compute: Compute, resuming: bool, world: World = World()) -> None:
    """Make the run folder and write config.json; --overwrite first removes the old run's files."""
    os.makedirs(cfg.save_dir, exist_ok=True)
    for name in RUN_FILES:  # half-written files of a killed run (the complete versions were kept)
        for leftover in glob.glob(os.path.join(glob.escape(cfg.save_dir), glob.escape(name) + ".tmp[0-9]*")):
            os.remove(leftover)
    if cfg.overwrite and not resuming:
        for name in RUN_FILES:
            if os.path.exists(os.path.join(cfg.save_dir, name)):
                os.remove(os.path.join(cfg.save_dir, name))
    settings = to_dict(cfg)
    batch = cfg.lbfgs_batch_size if cfg.optimizer == "lbfgs" else cfg.batch_size
    settings.update(world_size=world.size, global_batch_size=batch * world.size,
                    resolved_device=str(compute.device),
                    resolved_precision=compute.precision,
                    versions={"torch": torch.__version__, "torchvision": _torchvision_version(),
                              "python": platform.python_version()})
    write_json(os.path.join(cfg.save_dir, "config.json"), settings)


def _torchvision_version() -> str:
    """From the package metadata: importing torchvision costs about 1 s of start-up."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torchvision")
    except PackageNotFoundError:  # e.g. a source build on the path
        import torchvision
        return torchvision.__version__
