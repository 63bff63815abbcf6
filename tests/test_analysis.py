"""Behaviour of analysis.py: seed statistics, the markdown table, phase switches, γ statistics."""

import math

import pytest
import torch

from bnonly.runs import analysis


def history(train_acc, **columns):
    """Return a history with epochs 1..n, the given train_acc and other columns."""
    epochs = len(train_acc)
    return {"epoch": [float(e) for e in range(1, epochs + 1)], "train_loss": [1.0] * epochs,
            "train_acc": list(train_acc), **columns}


def test_mean_std_uses_sample_std():
    mean, std = analysis.mean_std([1, 2, 3, 4])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # ddof=1, not sqrt(5/4)
    assert analysis.mean_std([7])[0] == 7 and math.isnan(analysis.mean_std([7])[1])
    assert all(math.isnan(value) for value in analysis.mean_std([1, math.nan]))  # a gap stays a gap


def test_mean_curves_cut_to_shortest_run_and_keep_text_columns():
    runs = [history([10, 20, 30], phase=["bn", "all", "all"]), history([14, 24], phase=["bn", "all"])]
    mean, std = analysis.mean_curves(runs)
    assert mean == {"epoch": [1.0, 2.0], "train_loss": [1.0, 1.0], "train_acc": [12.0, 22.0],
                    "phase": ["bn", "all"]}
    assert std["train_acc"] == pytest.approx([2 * math.sqrt(2)] * 2) and "phase" not in std


def test_group_runs_by_key_keeps_order_and_lone_runs():
    runs = [{"name": name, "config": {}, "history": history([acc])}
            for name, acc in (("a_s0", 1), ("b", 2), ("a_s1", 3), ("c", 4))]
    keys = {"a_s0": "a", "a_s1": "a", "b": "b", "c": None}
    groups = analysis.group_runs(runs, lambda run: keys[run["name"]])
    assert [(group["name"], len(group["runs"])) for group in groups] == [("a_s", 2), ("b", 1), ("c", 1)]
    assert groups[0]["history"]["train_acc"] == [2.0]
    assert analysis.seeds_note(groups[0]) == " (2 seeds)" and analysis.seeds_note(groups[1]) == ""


def test_table_mixed_held_out_splits_say_which_and_missing_passes_is_a_dash():
    with_val = history([80, 90], val_acc=[60.0, 55.0], test_acc=[1.0, 2.0])
    with_test = history([70, 75], test_acc=[50.0, 52.5])
    lines = analysis.markdown_table([("x|y", [with_val]), ("z", [with_test])]).splitlines()
    assert lines[0] == ("| run | n | epochs | final held-out acc | best held-out acc | final train_acc "
                        "| final train_loss | passes | image-passes (M) |")
    assert lines[2] == "| x\\|y | 1 | 2 | 55.00 (val) | 60.00 (val) | 90.00 | 1.0000 | – | – |"
    assert lines[3] == "| z | 1 | 2 | 52.50 (test) | 52.50 (test) | 75.00 | 1.0000 | – | – |"


def test_table_has_the_adapted_accuracy_columns_when_a_run_has_them():
    adapted = [history([80, 90], val_acc=[60.0, 55.0], val_adapted_acc=[70.0, 66.0]),
               history([80, 90], val_acc=[58.0, 57.0], val_adapted_acc=[68.0, 72.0])]
    plain = history([70, 75], val_acc=[50.0, 52.5])
    lines = analysis.markdown_table([("a", adapted), ("p", [plain])]).splitlines()
    assert lines[0].endswith("| image-passes (M) | final val_adapted_acc | best val_adapted_acc |")
    assert lines[2].endswith("| – | – | 69.00 ± 4.24 | 71.00 ± 1.41 |")  # finals 66, 72; bests 70, 72
    assert lines[3].endswith("| – | – | – | – |")
    assert "adapted" not in analysis.markdown_table([("p", [plain])])
    on_test = history([80, 90], test_acc=[50.0, 52.0], test_adapted_acc=[61.0, 63.0])
    mixed = analysis.markdown_table([("a", adapted[:1]), ("t", [on_test])]).splitlines()
    assert mixed[0].endswith("| final adapted acc | best adapted acc |")
    assert mixed[2].endswith("| 66.00 (val) | 70.00 (val) |") and mixed[3].endswith("| 63.00 (test) | 63.00 (test) |")


def test_phase_changes_at_the_last_epoch_of_the_old_phase():
    switched = history([0] * 8, phase=["bn"] * 5 + ["all"] * 3)
    assert analysis.phase_changes(switched) == [{"epoch": 5.0, "label": "bn → all"}]
    back = history([0] * 4, phase=["bn", "all", "", "bn"])  # an empty cell is no switch
    assert analysis.phase_changes(back) == [{"epoch": 1.0, "label": "bn → all"}]
    assert analysis.phase_changes(history([0] * 3)) == []  # no phase column
    assert analysis.phase_marks([switched, switched, back]) == [
        {"epoch": 1.0, "label": "bn → all"}, {"epoch": 5.0, "label": "bn → all"}]


def bn(prefix, gamma, beta=None):
    """Return one BatchNorm layer's state_dict entries."""
    return {f"{prefix}.weight": gamma, f"{prefix}.bias": beta if beta is not None else [0.0] * len(gamma),
            f"{prefix}.running_mean": [0.0] * len(gamma), f"{prefix}.running_var": [1.0] * len(gamma)}


STATE = {"conv1.weight": [[1.0]], **bn("bn1", [0.0, 0.5, 0.005, 1.0], [1.0, 2.0, 3.0, 4.0]),
         "layer1.0.conv1.weight": [[1.0]], **bn("layer1.0.bn1", [0.001, 0.2]),
         **bn("layer3.4.bn2", [-0.005, 0.3, 0.4, 0.5]), "fc.weight": [[0.0]], "fc.bias": [0.0]}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_gamma_stats_fractions_per_layer_and_stage(as_tensor):
    state = {key: torch.tensor(value) for key, value in STATE.items()} if as_tensor else STATE
    stats = analysis.gamma_stats(state)
    assert stats["threshold"] == 0.01
    assert stats["layers"] == {"bn1": 0.5, "layer1.0.bn1": 0.5, "layer3.4.bn2": 0.25}  # model order
    assert list(stats["layers"]) == ["bn1", "layer1.0.bn1", "layer3.4.bn2"]
    assert stats["overall"] == pytest.approx(4 / 10)  # channel-weighted, not the mean of layers
    assert list(stats["stages"]) == ["stem", "layer1", "layer3"]
    assert stats["stages"]["stem"]["gamma"] == pytest.approx([0.0, 0.5, 0.005, 1.0])
    assert stats["stages"]["stem"]["beta"] == [1.0, 2.0, 3.0, 4.0]
    assert all(type(value) is float for value in stats["stages"]["layer3"]["gamma"])  # plain data


def test_gamma_stats_threshold_and_no_batchnorm():
    assert analysis.gamma_stats(STATE, threshold=0.25)["layers"]["layer1.0.bn1"] == 1.0
    empty = analysis.gamma_stats({"fc.weight": [1.0], "fc.bias": [0.0]})
    assert empty["layers"] == {} and math.isnan(empty["overall"])


def test_history_written_over_rows_of_two_generations_reads_back_with_compute_per_epoch(tmp_path):
    """A run resumed from a checkpoint older than the image counters: its first rows lack them. The file
    gets every column (blank where a row has none) and image-passes fall back to passes x batch there."""
    from bnonly.runs.runfiles import write_history
    old = {"epoch": 1, "train_loss": 2.0, "train_acc": 10.0, "passes": 10}
    new = {**old, "epoch": 2, "images_forward_backward": 1000, "images_forward_only": 200}
    write_history(str(tmp_path / "history.csv"), [old, new])
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["epoch,train_loss,train_acc,passes,images_forward_backward,images_forward_only",
                     "1,2.0,10.0,10,,", "2,2.0,10.0,10,1000,200"]
    from bnonly.runs import run_reader
    history = analysis.add_compute_axes(run_reader.read_history(str(tmp_path / "history.csv")),
                                        {"optimizer": "sgd", "batch_size": 64})
    assert history["image_passes"] == [640.0, 640.0 + 1000 + analysis.FORWARD_ONLY_COST * 200]
