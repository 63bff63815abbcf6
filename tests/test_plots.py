"""Behaviour of plots.py: which files it writes, that they show the curves, seed groups, the
--table text, phase marks, the --gamma pictures, and its errors."""

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors
from matplotlib import image as mpimg

from conftest import run_main
from bnonly.runs import run_groups  # conftest puts the repo on the path
from bnonly.runs import run_reader

REPO = Path(__file__).resolve().parents[1]


def load_plots():
    """The module behind plots.py (conftest puts the repo on the path)."""
    return importlib.import_module("bnonly.runs.plotting")


plots = load_plots()

BASE_CONFIG = {
    "arch": "resnet32", "width": 1, "trainable": "bn", "optimizer": "sgd", "lr": 0.1,
    "milestones": [80, 120], "epochs": 10, "seed": 0, "save_dir": "runs/x",
    "device": "cpu", "versions": {"torch": "2.0"},
}


def make_run(root, name, config=BASE_CONFIG, val=False, test=True, epochs=10, **changes):
    """Write a tiny run folder `root/name` with config.json (unless None) and history.csv."""
    folder = Path(root) / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    columns = ["epoch", "lr", "train_loss", "train_acc"]
    columns += ["val_loss", "val_acc"] if val else []
    columns += ["test_loss", "test_acc"] if test else []
    columns += ["epoch_seconds", "images_per_second", "passes", "phase"]
    lines = [",".join(columns)]
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch, "train_acc": 100 - 80 / epoch,
               "val_loss": 2.2 / epoch, "val_acc": 95 - 80 / epoch,
               "test_loss": 2.4 / epoch, "test_acc": 90 - 80 / epoch,
               "epoch_seconds": 1.5, "images_per_second": 900.0, "passes": epoch, "phase": "main"}
        lines.append(",".join(str(row[column]) for column in columns))
    (folder / "history.csv").write_text("\n".join(lines) + "\n")
    return folder


def write_history(folder, columns, *rows):
    """Replace folder/history.csv with `columns` and one row (a sequence of cells) per epoch."""
    lines = [",".join(columns)] + [",".join(str(cell) for cell in row) for row in rows]
    (Path(folder) / "history.csv").write_text("\n".join(lines) + "\n")


def run_cli(*args):
    """plots.py from the repo root, in this process (a new interpreter and matplotlib's import would cost
    seconds a call)."""
    return run_main(plots.main, "plots.py", args)


def written(out):
    """Return the sorted file names in the output folder."""
    return sorted(path.name for path in Path(out).iterdir())


def count_color(png, color, tolerance=0.1):
    """Return (number of pixels near `color`, columns they span) in a PNG file."""
    pixels = mpimg.imread(png)[..., :3]  # (H, W, 3) floats in [0, 1]
    target = np.array(colors.to_rgb(color))
    near = np.abs(pixels - target).max(axis=-1) < tolerance
    columns = np.flatnonzero(near.any(axis=0))
    span = columns[-1] - columns[0] + 1 if columns.size else 0
    return int(near.sum()), int(span)


def test_single_run_draws_train_and_test_curves(tmp_path):
    run = make_run(tmp_path, "sgd_run")
    out = tmp_path / "out"
    result = run_cli(run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert written(out) == ["resnet32_SGD_bn_acc.png", "resnet32_SGD_bn_loss.png"]
    assert result.stdout.split() == [str(out / "resnet32_SGD_bn_loss.png"),
                                     str(out / "resnet32_SGD_bn_acc.png")]
    # Control: the same figure (title, axes, legend swatches) with every curve blanked out.
    plot = plots.plan_run_plots(plots.read_run(str(run)), "control")[1]
    for curve in plot["lines"]:
        curve["values"] = [math.nan] * len(curve["values"])
    plots.draw_plot(plot, tmp_path / "control.png")
    width = mpimg.imread(out / "resnet32_SGD_bn_acc.png").shape[1]
    for color in ("C0", "C1"):  # train, test
        drawn, span = count_color(out / "resnet32_SGD_bn_acc.png", color)
        blank, _ = count_color(tmp_path / "control.png", color)
        assert drawn > blank + 400, f"{color} curve missing: {drawn} vs {blank} pixels"
        assert span > width / 2, f"{color} curve spans only {span} of {width} columns"


def test_two_runs_differing_in_optimizer_get_overlays_and_comparison(tmp_path):
    sgd = make_run(tmp_path, "a")
    lbfgs = make_run(tmp_path, "b", optimizer="lbfgs", save_dir="runs/y", checkpoint_path="c")
    out = tmp_path / "out"
    result = run_cli(sgd, lbfgs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert written(out) == sorted([
        "resnet32_SGD_bn_loss.png", "resnet32_SGD_bn_acc.png",
        "resnet32_LBFGS_bn_loss.png", "resnet32_LBFGS_bn_acc.png",
        "train_loss.png", "train_acc.png", "test_loss.png", "test_acc.png",
        "SGD_vs_LBFGS_loss.png", "SGD_vs_LBFGS_acc.png",
    ])
    assert len(result.stdout.splitlines()) == 10


def test_comparison_plot_styles_and_labels(tmp_path):
    runs = [plots.read_run(str(make_run(tmp_path, "a"))),
            plots.read_run(str(make_run(tmp_path, "b", optimizer="lbfgs")))]
    acc = plots.plan_comparison_plots(runs, "optimizer")[1]
    assert acc["filename"] == "SGD_vs_LBFGS_acc.png"
    assert [(c["label"], c["color"], c["linestyle"]) for c in acc["lines"]] == [
        ("SGD train", "C0", "--"), ("SGD test", "C0", "-"),
        ("LBFGS train", "C1", "--"), ("LBFGS test", "C1", "-")]
    assert run_groups.run_labels(runs) == ["optimizer=SGD", "optimizer=LBFGS"]


def test_runs_differing_in_two_settings_get_no_comparison(tmp_path):
    sgd = make_run(tmp_path, "a")
    lbfgs = make_run(tmp_path, "b", optimizer="lbfgs", trainable="all")
    out = tmp_path / "out"
    result = run_cli(sgd, lbfgs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert not [name for name in written(out) if "_vs_" in name]
    assert "train_acc.png" in written(out)
    runs = [plots.read_run(str(sgd)), plots.read_run(str(lbfgs))]
    assert run_groups.run_labels(runs) == ["trainable=bn, optimizer=SGD", "trainable=all, optimizer=LBFGS"]


def test_optimizer_comparison_ignores_the_settings_that_follow_it(tmp_path):
    sgd = make_run(tmp_path, "a")
    lbfgs = make_run(tmp_path, "b", optimizer="lbfgs", lr=1.0, lbfgs_batch_size=512)
    runs = [plots.read_run(str(sgd)), plots.read_run(str(lbfgs))]
    assert plots.comparison_key(runs) == "optimizer"
    tuned = make_run(tmp_path, "c", lr=0.05)  # the same optimizer: lr is a real difference
    assert plots.comparison_key([plots.read_run(str(sgd)), plots.read_run(str(tuned))]) == "lr"


def test_three_runs_comparison_name_keeps_given_order(tmp_path):
    runs = [plots.read_run(str(make_run(tmp_path, name, lr=lr)))
            for name, lr in (("a", 1.0), ("b", 0.1), ("c", "1e-2 x"))]
    names = [plot["filename"] for plot in plots.plan_plots(runs)]
    assert "1.0_vs_0.1_vs_1e-2_x_acc.png" in names


def test_val_columns_give_val_overlay_and_missing_test_is_fine(tmp_path):
    first = make_run(tmp_path, "a", val=True, test=False)
    second = make_run(tmp_path, "b", val=True, test=False, epochs=3, width=2)
    out = tmp_path / "out"
    result = run_cli(first, second, "--out", out)
    assert result.returncode == 0, result.stderr
    names = written(out)
    assert {"val_loss.png", "val_acc.png", "train_acc.png", "1_vs_2_acc.png"} <= set(names)
    assert not [name for name in names if name.startswith("test_")]


def test_same_arch_optimizer_trainable_twice_gives_distinct_files(tmp_path):
    first = make_run(tmp_path, "seed0")
    second = make_run(tmp_path, "seed0_again")
    out = tmp_path / "out"
    result = run_cli(first, second, "--out", out)
    assert result.returncode == 0, result.stderr
    assert {"resnet32_SGD_bn_seed0_acc.png", "resnet32_SGD_bn_seed0_again_acc.png",
            "resnet32_SGD_bn_seed0_loss.png", "resnet32_SGD_bn_seed0_again_loss.png"
            } <= set(written(out))
    assert len(set(result.stdout.splitlines())) == len(result.stdout.splitlines())


def test_missing_config_falls_back_to_folder_name(tmp_path):
    run = plots.read_run(str(make_run(tmp_path, "old run", config=None)))
    assert run["config"] is None
    assert [plot["filename"] for plot in plots.plan_plots([run])] == [
        "old_run_loss.png", "old_run_acc.png"]


def test_read_run_returns_float_columns_and_ignores_unknown(tmp_path):
    run = plots.read_run(str(make_run(tmp_path, "a", epochs=3)))
    assert run["name"] == "a" and run["config"]["optimizer"] == "sgd"
    assert run["history"]["epoch"] == [1.0, 2.0, 3.0]
    assert run["history"]["train_loss"] == [2.0, 1.0, 2.0 / 3]
    assert run["history"]["phase"] == ["main"] * 3  # the one text column
    assert "val_acc" not in run["history"]
    write_history(tmp_path / "a", ["epoch", "train_loss", "train_acc", "note"], [1, 0.5, 80, "hi"])
    assert set(plots.read_run(str(tmp_path / "a"))["history"]) == {"epoch", "train_loss", "train_acc"}


def corrupt_history(folder):
    (folder / "history.csv").write_text("epoch,train_loss,train_acc\n1,0.5,80\nabc\n")


def history_without_column(folder):
    (folder / "history.csv").write_text("epoch,train_loss\n1,0.5\n")


def history_without_rows(folder):
    (folder / "history.csv").write_text("epoch,train_loss,train_acc,test_loss,test_acc\n")


def non_numeric_value(folder):
    (folder / "history.csv").write_text("epoch,train_loss,train_acc\n1,0.5,high\n")


def corrupt_config(folder):
    (folder / "config.json").write_text('{"arch": "resnet32",')


def no_history(folder):
    (folder / "history.csv").unlink()


@pytest.mark.parametrize("damage, expected", [
    (None, "no such folder"),
    (no_history, "no history.csv"),
    (corrupt_history, "history.csv"),
    (non_numeric_value, "non-numeric value 'high'"),
    (history_without_column, "missing column(s) train_acc"),
    (history_without_rows, "no rows"),
    (corrupt_config, "invalid JSON"),
])
def test_bad_run_folder_is_one_line_error_and_writes_nothing(tmp_path, damage, expected):
    good = make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad")
    if damage is None:
        bad = tmp_path / "missing"
    else:
        damage(bad)
    out = tmp_path / "out"
    result = run_cli(good, bad, "--out", out)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("plots.py: error: ") and expected in result.stderr
    assert str(bad) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_no_run_dir_prints_usage_and_exits_2():
    result = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- seed groups and --table

TABLE_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "passes"]


def make_seed_runs(root):
    """Three seeds of lr=0.1 (one a longer run) and one run of lr=0.05, with known numbers."""
    histories = {  # per run: rows of epoch, train_loss, train_acc, val_loss, val_acc, passes
        "bn_s0": [(1, 0.9, 70, 1, 50, 100), (2, 0.5, 80, 1, 60, 100)],
        "bn_s1": [(1, 0.9, 72, 1, 70, 100), (2, 0.6, 82, 1, 65, 100), (3, 0.1, 99, 1, 99, 100)],
        "bn_s2": [(1, 0.9, 74, 1, 55, 100), (2, 0.7, 84, 1, 70, 100)],
        "low_lr": [(1, 1.5, 30, 2, 40, 100), (2, 1.25, 35.5, 2, 45, 100)],
    }
    folders = []
    for seed, (name, rows) in enumerate(histories.items()):
        changes = {"lr": 0.05} if name == "low_lr" else {"seed": seed}
        folder = make_run(root, name, save_dir=f"runs/{name}", **changes)
        write_history(folder, TABLE_COLUMNS, *rows)
        folders.append(folder)
    return folders


def test_three_seeds_form_one_group_with_mean_and_sample_std(tmp_path):
    runs = [plots.read_run(str(folder)) for folder in make_seed_runs(tmp_path)]
    groups = run_groups.group_runs(runs)
    assert [len(group["runs"]) for group in groups] == [3, 1]
    seeds = groups[0]
    assert seeds["name"] == "bn_s"  # the folder names' common start
    assert seeds["history"]["epoch"] == [1.0, 2.0]  # cut to the shortest run
    assert seeds["history"]["train_acc"] == [72.0, 82.0]
    assert seeds["std"]["train_acc"] == [2.0, 2.0]  # sample std (ddof=1) of 70, 72, 74
    assert seeds["std"]["val_acc"][1] == pytest.approx(5.0)  # of 60, 65, 70
    assert groups[1]["history"] is runs[3]["history"] and groups[1]["std"] == {}
    assert run_groups.group_labels(groups) == ["lr=0.1 (3 seeds)", "lr=0.05"]
    assert plots.comparison_key(groups, run_groups.group_ignore(groups)) == "lr"


def test_seed_group_is_drawn_as_mean_with_band(tmp_path):
    runs = [plots.read_run(str(folder)) for folder in make_seed_runs(tmp_path)]
    planned = {plot["filename"]: plot for plot in plots.plan_plots(runs)}
    assert {f"resnet32_SGD_bn_{name}_acc.png" for name in ("bn_s0", "bn_s1", "bn_s2", "low_lr")
            } <= set(planned)  # per-run plots stay per run
    overlay = planned["val_acc.png"]
    assert [(curve["label"], curve["std"] is not None) for curve in overlay["lines"]] == [
        ("lr=0.1 (3 seeds)", True), ("lr=0.05", False)]
    assert [curve["label"] for curve in planned["0.1_vs_0.05_acc.png"]["lines"]] == [
        "0.1 train (3 seeds)", "0.1 val (3 seeds)", "0.05 train", "0.05 val"]
    # The band is really drawn: pale C0 pixels that a band-less control lacks.
    overlay["lines"] = overlay["lines"][:1]
    plots.draw_plot(overlay, tmp_path / "band.png")
    plots.draw_plot({**overlay, "lines": [{**overlay["lines"][0], "std": None}]}, tmp_path / "control.png")
    pale = 0.8 * np.ones(3) + 0.2 * np.array(colors.to_rgb("C0"))  # C0 at BAND_ALPHA on white
    with_band, _ = count_color(tmp_path / "band.png", pale, tolerance=0.03)
    without, _ = count_color(tmp_path / "control.png", pale, tolerance=0.03)
    assert with_band > without + 1000, (with_band, without)


def test_table_prints_mean_and_std_per_group_and_draws_nothing(tmp_path):
    result = run_cli(*make_seed_runs(tmp_path), "--table")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "| run | n | epochs | final val_acc | best val_acc | final train_acc | final train_loss | passes | image-passes (M) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",  # image-passes: 200 passes x -b 128, in millions
        "| lr=0.1 | 3 | 2 | 65.00 ± 5.00 | 66.67 ± 5.77 | 82.00 ± 2.00 | 0.6000 ± 0.1000 | 200 ± 0 | 0.026 ± 0.000 |",
        "| lr=0.05 | 1 | 2 | 45.00 | 45.00 | 35.50 | 1.2500 | 200 | 0.026 |",
    ]


def test_label_names_each_seed_group_in_table_legends_and_comparison(tmp_path):
    folders = make_seed_runs(tmp_path)
    result = run_cli(*folders, "--table", "--label", "fast", "--label", "slow")
    assert result.returncode == 0, result.stderr
    assert [line.split(" | ")[0] for line in result.stdout.splitlines()[2:]] == ["| fast", "| slow"]
    runs = [plots.read_run(str(folder)) for folder in folders]
    planned = {plot["filename"]: plot for plot in plots.plan_plots(runs, names=["fast", "slow"])}
    assert [curve["label"] for curve in planned["val_acc.png"]["lines"]] == ["fast (3 seeds)", "slow"]
    assert [curve["label"] for curve in planned["0.1_vs_0.05_acc.png"]["lines"]] == [  # file named by the values
        "fast train (3 seeds)", "fast val (3 seeds)", "slow train", "slow val"]


@pytest.mark.parametrize("extra, expected", [
    (("--label", "one"), "1 --label given for 2 seed group(s) (bn_s, low_lr); give one per group"),
    (("--label", "a", "--label", "b", "--gamma"), "--label names the curves' seed groups; it does not go with --gamma"),
])
def test_label_count_or_mode_mismatch_is_one_line_error_and_writes_nothing(tmp_path, extra, expected):
    out = tmp_path / "out"
    result = run_cli(*make_seed_runs(tmp_path), "--out", out, *extra)
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_ngd_settings_and_milestones_follow_the_optimizer_and_schedule_in_labels(tmp_path):
    ngd = dict(optimizer="ngd", lr=1.6, ngd_power=0.5, schedule="cosine", milestones=None)
    runs = [plots.read_run(str(make_run(tmp_path, "sgd", ngd_power=1.0, ngd_refresh=10))),
            plots.read_run(str(make_run(tmp_path, "r10", ngd_refresh=10, **ngd))),
            plots.read_run(str(make_run(tmp_path, "r50", ngd_refresh=50, **ngd)))]
    assert run_groups.run_labels(runs) == [  # not SGD's unused ngd_power or milestones; ngd's refresh tells them apart
        "schedule=multistep, optimizer=SGD", "schedule=cosine, optimizer=NGD, ngd_refresh=10",
        "schedule=cosine, optimizer=NGD, ngd_refresh=50"]


def test_ngd_settings_of_a_phase_follow_the_phases_in_labels_and_comparison(tmp_path):
    from dataclasses import asdict
    from bnonly.config import parse_args
    configs = [asdict(parse_args(["--phases", phases])[0]) for phases in ("all:20", "bn:2:ngd:1.6,all:18")]
    runs = [plots.read_run(str(make_run(tmp_path, name, config=config)))
            for name, config in zip(("full", "warm"), configs)]
    assert run_groups.run_labels(runs) == ["trainable=all:20", "trainable=bn:2:ngd:1.6,all:18"]
    assert plots.comparison_key(runs) == "trainable"
    both = [asdict(parse_args(["--phases", phases, "--ngd-refresh", refresh])[0])
            for phases, refresh in (("bn:2:ngd:1.6,all:18", "10"), ("bn:3:ngd:1.6,all:17", "50"))]
    runs = [plots.read_run(str(make_run(tmp_path, name, config=config)))
            for name, config in zip(("r10", "r50"), both)]  # both use ngd: its setting is a second difference
    assert run_groups.run_labels(runs) == ["trainable=bn:2:ngd:1.6,all:18, ngd_refresh=10",
                                           "trainable=bn:3:ngd:1.6,all:17, ngd_refresh=50"]
    assert plots.comparison_key(runs) is None


def test_table_of_one_group_uses_folder_name_and_with_out_also_draws(tmp_path):
    run = make_run(tmp_path, "only", epochs=4)  # test columns only
    out = tmp_path / "out"
    result = run_cli(run, "--table", "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | n | epochs | final test_acc | best test_acc |")
    assert lines[2] == "| only | 1 | 4 | 70.00 | 70.00 | 80.00 | 0.5000 | 10 | 0.001 |"  # 10 x 128 images
    assert lines[3:] == [str(out / "resnet32_SGD_bn_loss.png"), str(out / "resnet32_SGD_bn_acc.png")]


def test_table_reads_the_adapted_accuracy_of_a_bn_adapt_run(tmp_path):
    run = make_run(tmp_path, "adapted", epochs=2)
    write_history(run, ["epoch", "train_loss", "train_acc", "val_acc", "val_adapted_loss", "val_adapted_acc"],
                  (1, 1.0, 50.0, 40.0, 1.1, 45.0), (2, 0.8, 60.0, 50.0, 0.9, 58.5))
    result = run_cli(run, "--table")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("| final val_adapted_acc | best val_adapted_acc |")
    assert lines[2] == "| adapted | 1 | 2 | 50.00 | 50.00 | 60.00 | 0.8000 | – | – | 58.50 | 58.50 |"


# ---------------------------------------------------------------- phases

def test_phase_switch_is_marked_in_run_and_overlay_plots(tmp_path):
    first = make_run(tmp_path, "a", trainable="bn")
    second = make_run(tmp_path, "b", trainable="all")
    write_history(first, ["epoch", "train_loss", "train_acc", "phase"],
                  *[(epoch, 1 / epoch, 10 * epoch, "bn" if epoch <= 5 else "all") for epoch in range(1, 9)])
    runs = [plots.read_run(str(first)), plots.read_run(str(second))]
    planned = {plot["filename"]: plot for plot in plots.plan_plots(runs)}
    switch = [{"epoch": 5.0, "label": "bn → all"}]
    assert planned["resnet32_SGD_bn_acc.png"]["phases"] == switch
    assert planned["resnet32_SGD_all_acc.png"]["phases"] == []  # 'main' throughout: no switch
    assert planned["train_acc.png"]["phases"] == switch and planned["bn_vs_all_acc.png"]["phases"] == switch
    plot = planned["resnet32_SGD_bn_acc.png"]
    plots.draw_plot(plot, tmp_path / "marked.png")
    plots.draw_plot({**plot, "phases": []}, tmp_path / "control.png")
    marked, _ = count_color(tmp_path / "marked.png", "0.35", tolerance=0.08)
    control, _ = count_color(tmp_path / "control.png", "0.35", tolerance=0.08)
    assert marked > control + 100, (marked, control)


def test_bad_numeric_cell_next_to_phase_is_still_one_line_error(tmp_path):
    run = make_run(tmp_path, "a")
    write_history(run, ["epoch", "train_loss", "train_acc", "phase"], (1, 0.5, "high", "bn"))
    result = run_cli(run)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "non-numeric value 'high' in column train_acc, line 2" in result.stderr


# ---------------------------------------------------------------- --gamma

def save_fake_checkpoint(folder):
    """Save a tiny checkpoint.pt: a stem BN, two stage BNs, a conv and a linear layer."""
    import torch

    def bn(prefix, gamma):
        return {f"{prefix}.weight": torch.tensor(gamma), f"{prefix}.bias": torch.zeros(len(gamma)),
                f"{prefix}.running_mean": torch.zeros(len(gamma)), f"{prefix}.running_var": torch.ones(len(gamma))}

    model = {"conv1.weight": torch.ones(4, 3, 3, 3), **bn("bn1", [0.0, 0.5, 0.005, 1.0]),
             **bn("layer1.0.bn1", [0.001, 0.2]), **bn("layer3.4.bn2", [-0.005, 0.3, 0.4, 0.5]),
             "fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}
    torch.save({"model": model, "epoch": 3}, Path(folder) / "checkpoint.pt")


def test_gamma_writes_two_pictures_per_run(tmp_path):
    first, second = make_run(tmp_path, "a"), make_run(tmp_path, "b", optimizer="lbfgs")
    for folder in (first, second):
        save_fake_checkpoint(folder)
    out = tmp_path / "out"
    result = run_cli(first, second, "--gamma", "--out", out)
    assert result.returncode == 0, result.stderr
    names = ["resnet32_SGD_bn_gamma.png", "resnet32_SGD_bn_disabled.png",
             "resnet32_LBFGS_bn_gamma.png", "resnet32_LBFGS_bn_disabled.png"]
    assert result.stdout.split() == [str(out / name) for name in names]
    assert written(out) == sorted(names)
    run = plots.read_gamma_run(str(first))
    assert run["gamma"]["overall"] == pytest.approx(0.4)


def test_gamma_without_checkpoint_is_one_line_error_and_writes_nothing(tmp_path):
    good, bad = make_run(tmp_path, "good"), make_run(tmp_path, "bad")
    save_fake_checkpoint(good)
    out = tmp_path / "out"
    result = run_cli(good, bad, "--gamma", "--out", out)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("plots.py: error: no checkpoint.pt in " + str(bad))
    assert not out.exists() and result.stdout == ""
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = run_cli(bad, "--gamma", "--out", out)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "unreadable checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_table_and_gamma_together_is_a_usage_error(tmp_path):
    result = run_cli(make_run(tmp_path, "a"), "--table", "--gamma")
    assert result.returncode == 2 and "not allowed with" in result.stderr


def test_settings_added_later_take_their_defaults_and_phases_compare_as_trainable(tmp_path):
    old = make_run(tmp_path, "old")  # BASE_CONFIG has none of the newer settings
    new = make_run(tmp_path, "new", label_smoothing=0.0, warmup_epochs=0, bn_weight_decay=True, phases=None,
                   resolved_precision="fp32", lbfgs_line_search="strong_wolfe")
    configs = [run_reader.read_folder(str(folder))["config"] for folder in (old, new)]
    assert run_groups.differing_settings(configs) == []
    # ngd's settings, whose defaults changed, do not split SGD runs made before and after; ngd runs keep them
    before = make_run(tmp_path, "before", ngd_power=1.0, ngd_refresh=10)
    after = make_run(tmp_path, "after", ngd_power=0.5, ngd_refresh=50)
    assert run_groups.differing_settings([run_reader.read_folder(str(f))["config"] for f in (before, after)]) == []
    ngd = [make_run(tmp_path, f"ngd{power}", optimizer="ngd", ngd_power=power) for power in (1.0, 0.5)]
    assert run_groups.differing_settings([run_reader.read_folder(str(f))["config"] for f in ngd]) == ["ngd_power"]
    # The process count is a setting (with per-process BN and batch it changes the experiment):
    # 2 processes are not a seed of 1, and a run from before torchrun counts as 1 process.
    two = make_run(tmp_path, "two", seed=1, world_size=2, device="cuda", save_dir="runs/two")
    one = make_run(tmp_path, "one", world_size=1)
    runs = [plots.read_run(str(folder)) for folder in (old, one, two)]
    assert [len(group["runs"]) for group in run_groups.group_runs(runs)] == [2, 1]
    assert run_groups.differing_settings([run["config"] for run in runs], run_groups.SEED_KEYS) == ["world_size"]
    full = make_run(tmp_path, "full", trainable="all")
    phased = make_run(tmp_path, "phased", trainable="bn", milestones=None, phases=[["bn", 2], ["all", 8]])
    runs = [plots.read_run(str(folder)) for folder in (full, phased)]
    assert runs[1]["config"]["trainable"] == "bn:2,all:8"
    assert plots.comparison_key(runs) == "trainable"  # phases and their per-phase milestones follow it
    assert run_groups.run_labels(runs) == ["trainable=all", "trainable=bn:2,all:8"]
    assert plots.plan_comparison_plots(runs, "trainable")[0]["filename"] == "all_vs_bn_2_all_8_loss.png"
    # --precision auto is a request: what it resolved to is the run's precision
    asked = make_run(tmp_path, "asked", precision="auto", resolved_precision="fp32")
    pinned = make_run(tmp_path, "pinned", seed=1, precision="fp32", resolved_precision="fp32")
    fast = make_run(tmp_path, "fast", seed=2, precision="auto", resolved_precision="bf16")
    runs = [plots.read_run(str(folder)) for folder in (asked, pinned, fast)]
    assert [len(group["runs"]) for group in run_groups.group_runs(runs)] == [2, 1]
    assert run_groups.differing_settings([run["config"] for run in runs], run_groups.SEED_KEYS) == [
        "precision", "resolved_precision"]


def test_plotting_and_sweeping_never_load_torch_or_the_trainer():
    """plots.py redraws from run files alone and sweep.py only starts train.py runs (STYLE.md): importing
    them loads neither torch nor the engine, the trainer or the precision checks."""
    import subprocess
    import sys

    code = ("import sys, plots, sweep, bnonly.runs.sweep_plots, bnonly.runs.run_reader, bnonly.runs.run_groups; "
            "print(sorted(m for m in ('torch', 'bnonly.training.engine', 'bnonly.training.trainer', "
            "'bnonly.training.compute', 'bnonly.training.resuming') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
