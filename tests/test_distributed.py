"""torchrun data parallelism on the CPU (gloo, 2 processes): one history, exact sharding, --sync-bn
against a single process, L-BFGS ranks in lockstep, resume, and the helpers' arithmetic."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, TINY, assert_one_line_error, read_csv, run_train, without_timings
from bnonly.config import parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.distributed import (World, all_sum, average_bn_statistics, convert_sync_batchnorm, shard, stop,
                                world_from_env, wrap)
from bnonly.training.compute import Compute
from bnonly.optim.factories import build_optimizer
from bnonly.training.engine import evaluate, train_one_epoch
from bnonly.models.resnet import build_model, freeze

SMALL = [*TINY, "-t", "bn", "--val-split", "64", "--epochs", "2"]


def torchrun(*args, processes=2, timeout=300):
    """Run train.py under torchrun on this machine (gloo, one thread per process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO / "train.py"), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_shards_cover_every_item_once():
    for n in (0, 1, 5, 64, 65, 127):
        for size in (1, 2, 3, 8):
            parts = [shard(n, World(rank, size)) for rank in range(size)]
            covered = [i for part in parts for i in range(n)[part]]
            assert covered == list(range(n))
            assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1


def test_world_from_torchrun_environment():
    assert world_from_env({}) == World() and not World().active and World().main
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.main, world.active) == (3, 4, 1, False, True)


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_two_processes_write_one_run(tmp_path, optimizer):
    folder = tmp_path / optimizer
    result = torchrun(*SMALL, "--optimizer", optimizer, "-b", "32", "--lbfgs-batch-size", "64",
                      "--lbfgs-max-iter", "2", "--tensorboard", "--save-dir", folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "config.json", "history.csv", "summary.json", "tensorboard"]
    assert len(os.listdir(folder / "tensorboard")) == 1  # one event file: rank 0's
    rows = read_csv(folder / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer
    assert result.stdout.count("epoch    1/2") == 1  # one printer
    config = json.loads((folder / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == {"sgd": 64, "lbfgs": 128}[optimizer]
    assert json.loads((folder / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow  # the fast suite has --sync-bn in the lockstep test
def test_sync_bn_two_by_64_follows_one_by_128(tmp_path):
    single = run_train(*SMALL, "-b", "128", "--save-dir", tmp_path / "single")
    double = torchrun(*SMALL, "-b", "64", "--sync-bn", "true", "--save-dir", tmp_path / "double")
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = read_csv(tmp_path / "single" / "history.csv"), read_csv(tmp_path / "double" / "history.csv")
    for a, b in zip(one, two, strict=True):
        for column in ("train_loss", "val_loss", "test_loss"):
            assert float(b[column]) == pytest.approx(float(a[column]), rel=1e-4), column
        for column in ("train_acc", "val_acc", "test_acc"):
            assert float(b[column]) == pytest.approx(float(a[column]), abs=100 / 64 + 1e-9), column


@pytest.mark.slow  # three torchrun jobs; the fast suite has one torchrun run and resumes in one process
def test_resume_under_torchrun_continues_exactly_and_needs_the_same_world(tmp_path):
    straight = torchrun(*SMALL, "-b", "32", "--epochs", "3", "--milestones", "2", "--save-dir", tmp_path / "straight")
    first = torchrun(*SMALL, "-b", "32", "--epochs", "2", "--milestones", "2", "--save-dir", tmp_path / "split")
    resumed = torchrun("--resume", tmp_path / "split", "--epochs", "3", "--no-progress")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr[-2000:]
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == without_timings(
        read_csv(tmp_path / "straight" / "history.csv"))
    assert_one_line_error(run_train("--resume", tmp_path / "split", "--epochs", "4", "--no-progress"),
                          "2 process(es)", "torchrun")


def _lockstep_worker(rank, size, init_file, out_dir, sync_bn, chunk, variant="torch"):
    """One rank: a BN-only L-BFGS epoch (and an evaluation) on the same tiny data as every rank; 99 images
    in global batches of 48 leave a last batch of 3, split 2 + 1."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    world = World(rank, size)
    torch.manual_seed(0)
    model = build_model("resnet20")
    if sync_bn:
        convert_sync_batchnorm(model, torch.device("cpu"))
    cfg = parse_args(["--optimizer", "lbfgs", "-t", "bn", "--lbfgs-batch-size", "24", "--lbfgs-max-iter",
                      "1" if variant in ("multibatch", "hvp") else "3", "--lbfgs-chunk-size", str(chunk),
                      "--lbfgs-variant", variant, "--no-progress"])[0]
    optimizer = build_optimizer(cfg, freeze(model, "bn"))
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (99, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (99,), generator=generator)
    pipeline = ImageInputs((128.0,) * 3, (64.0,) * 3, "cpu")
    cpu = Compute(torch.device("cpu"))
    result = train_one_epoch(wrap(model, world, torch.device("cpu")), optimizer, cfg, (images, labels), pipeline,
                             torch.Generator().manual_seed(2), 1, cpu, world=world)
    average_bn_statistics(model, world)
    sharded = evaluate(model, (images[:37], labels[:37]), pipeline, cpu, batch_size=8, world=world)  # 19 + 18 images
    whole = evaluate(model, (images[:37], labels[:37]), pipeline, cpu, batch_size=8)
    total = all_sum(world, torch.tensor(rank + 1.0))[0]
    torch.save({"params": [p.detach() for p in optimizer.param_groups[0]["params"]], "train": result,
                "sharded": sharded, "whole": whole, "total": total}, os.path.join(out_dir, f"rank{rank}.pt"))
    stop(world)


@pytest.mark.parametrize("sync_bn,chunk,variant", [
    (True, 8, "multibatch"), *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        (False, 0, "torch"), (True, 0, "torch"), (True, 8, "torch"), (False, 0, "batch"), (False, 0, "hvp")))])
def test_lbfgs_ranks_take_identical_steps(tmp_path, sync_bn, chunk, variant):
    mp.spawn(_lockstep_worker, args=(2, str(tmp_path / "init"), str(tmp_path), sync_bn, chunk, variant), nprocs=2,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)  # bit-identical: every rank took the same L-BFGS steps
    # the same line searches (5 global batches; torch and batch make several passes on each)
    assert ranks[0]["train"]["passes"] == ranks[1]["train"]["passes"] >= (5 if variant in ("multibatch", "hvp") else 6)
    assert ranks[0]["train"]["loss"] == ranks[1]["train"]["loss"]
    assert ranks[0]["sharded"] == ranks[1]["sharded"] and ranks[0]["total"] == 3.0
    assert ranks[0]["sharded"]["acc"] == ranks[0]["whole"]["acc"]  # every image counted once
    assert ranks[0]["sharded"]["loss"] == pytest.approx(ranks[0]["whole"]["loss"], rel=1e-6)
    torch.manual_seed(0)
    start = [p.detach() for p in freeze(build_model("resnet20"), "bn")]
    assert any(not torch.equal(a, b) for a, b in zip(ranks[0]["params"], start))  # training moved them


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_mid_epoch_and_the_resumed_run_matches(tmp_path):
    args = [*TINY, "-t", "bn", "--epochs", "4", "-b", "16", "--train-size", "512", "--save-dir"]
    straight = torchrun(*args, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    folder = tmp_path / "stopped"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train.py"), *map(str, args), str(folder)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (folder / "history.csv").exists():  # stop it in epoch 2
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.terminate()
    _, stderr = process.communicate(timeout=120)
    assert "stopped by SIGTERM" in stderr and "torchrun --nproc_per_node=2 train.py --resume" in stderr
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and (checkpoint["progress"] is None or checkpoint["progress"]["epoch"] == 2)
    resumed = torchrun("--resume", folder, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done, expected = read_csv(folder / "history.csv"), read_csv(tmp_path / "straight" / "history.csv")
    assert [r["epoch"] for r in done] == ["1", "2", "3", "4"]
    for a, b in zip(without_timings(done), without_timings(expected), strict=True):
        for column, value in b.items():  # BN statistics averaged mid-epoch: equal up to float rounding
            assert float(a[column]) == pytest.approx(float(value), rel=1e-5, abs=1e-9), column
