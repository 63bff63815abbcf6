"""plots.py SWEEP_DIR --across AXIS: final accuracy and disabled features against depth, width or size."""

import json

import pytest

from test_plots import make_run, plots, write_history


def make_sweep(root):
    """ResNet-14 and -32, bn and all, 2 seeds; the final val accuracy encodes the run, so means are known."""
    sweep = root / "sweep"
    finals = {}
    for arch, depth_bonus in (("resnet14", 0.0), ("resnet32", 10.0)):
        for trainable, mode_bonus in (("bn", 0.0), ("all", 30.0)):
            for seed in (0, 1):
                name = f"arch={arch},trainable={trainable},seed={seed}"
                folder = make_run(sweep, name, arch=arch, trainable=trainable, seed=seed, save_dir=str(sweep / name))
                final = 40.0 + depth_bonus + mode_bonus + 2.0 * seed  # seeds 2 points apart: std sqrt(2)
                write_history(folder, ["epoch", "train_loss", "train_acc", "val_acc"], [1, 2.0, 30.0, 35.0],
                              [2, 1.5, 40.0, final])
                params = {"resnet14": 928, "resnet32": 2272}[arch] if trainable == "bn" else 10 ** 5 * int(arch[6:])
                (folder / "summary.json").write_text(json.dumps(
                    {"trainable_params": params, "disabled_features": {"overall": 0.05 if trainable == "bn" else 0.01}}))
                finals[arch, trainable, seed] = final
    return sweep, finals


def test_table_across_depth_has_one_row_per_mode_and_depth(tmp_path, capsys):
    sweep, finals = make_sweep(tmp_path)
    plots.main([str(sweep), "--across", "depth", "--table"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| trainable")]
    assert rows == ["| trainable=all | 14 | 2 | 71.00 ± 1.41 | 71.00 ± 1.41 | 1.0 ± 0.0 |",  # folder-name order
                    "| trainable=all | 32 | 2 | 81.00 ± 1.41 | 81.00 ± 1.41 | 1.0 ± 0.0 |",
                    "| trainable=bn | 14 | 2 | 41.00 ± 1.41 | 41.00 ± 1.41 | 5.0 ± 0.0 |",
                    "| trainable=bn | 32 | 2 | 51.00 ± 1.41 | 51.00 ± 1.41 | 5.0 ± 0.0 |"]
    assert not (tmp_path / "tmp").exists()  # --table alone draws nothing


def test_pictures_across_trainable_parameters(tmp_path, capsys):
    sweep, _ = make_sweep(tmp_path)
    out = tmp_path / "pictures"
    plots.main([str(sweep), "--across", "trainable_params", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["trainable_params_acc.png", "trainable_params_disabled.png"]
    lines = plots.across_lines([plots.read_run(str(p)) for p in plots.run_folders([str(sweep)])], "trainable_params")
    assert [[point["x"] for point in line["points"]] for line in lines] == [[1.4e6, 3.2e6], [928, 2272]]


def test_an_axis_no_run_has_is_a_one_line_error(tmp_path, capsys):
    sweep, _ = make_sweep(tmp_path)
    with pytest.raises(SystemExit) as stop:
        plots.main([str(sweep), "--across", "dropout"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "dropout" in error[0]
