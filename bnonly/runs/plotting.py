"""Draw loss and accuracy curves, a results table and BatchNorm γ pictures from run folders.

    python plots.py RUN_DIR [RUN_DIR ...] [--out DIR]     # curves
    python plots.py RUN_DIR [RUN_DIR ...] --table          # markdown table on stdout only
    python plots.py RUN_DIR [RUN_DIR ...] --gamma [--out DIR]
    python plots.py RUN_DIR [RUN_DIR ...] --x image_passes     # curves against compute (or wall_seconds)
    python plots.py SWEEP_DIR --across depth [--table]         # a sweep: final accuracy against depth
    python plots.py A_s0 A_s1 B --label "SGD" --label "Adam"    # name the seed groups in legends and table

A SWEEP_DIR (sweep.py's folder) stands for the run folders in it.

A run folder holds `history.csv` (one row per epoch: `epoch, lr, train_loss, train_acc,
[val_loss, val_acc], [test_loss, test_acc], ..., [phase]`, accuracy in percent), usually
`config.json` (a flat dict of the settings) and, for --gamma, `checkpoint.pt`. This file reads
only those files and never imports the trainer, so plots can be redrawn without retraining.

Runs whose settings differ only in `seed` (see SEED_KEYS) form a seed group: overlays and
comparisons draw a group of n > 1 runs as its mean curve with a ±1 sample-std band (ddof=1),
on the epochs all its runs have, labelled '(n seeds)'. A switch of the `phase` column
(e.g. `bn` -> `all`) is marked by a dotted vertical line in every curve plot.

Files written into --out (default `tmp/`):
  * per run: `<arch>_<OPTIMIZER>_<trainable>_loss.png` and `..._acc.png`, with the train,
    val and test curves (`_<folder name>` is appended when two runs would share a name);
  * with several runs: `train_loss.png`, `train_acc.png`, `val_*.png`, `test_*.png`, one
    line per seed group, labelled by the settings in which the groups differ (or by --label);
  * with several groups that differ in exactly one setting: `<A>_vs_<B>_loss.png` and
    `<A>_vs_<B>_acc.png`, train (dashed) and val-or-test (solid) curve per group;
  * with --gamma, per run instead: `<prefix>_gamma.png` (γ and β histograms per stage) and
    `<prefix>_disabled.png` (fraction of channels with |γ| < 0.01 per BN layer).
--table prints one row per seed group (final and best accuracy, final train metrics, passes,
as mean ± std) and draws the curves as well only when --out is given.

Reading (run_reader.py), seed groups and labels (run_groups.py) and planning (`plan_plots`: plain
dicts) are pure, with the numbers from `analysis.py`; only the `draw_*` functions touch matplotlib.
"""

import argparse
import contextlib
import functools
import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # no screen: write files only
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bnonly.runs import analysis  # noqa: E402  (pure numbers: seed statistics, table, phases, γ)
from bnonly.runs import sweep_plots  # noqa: E402  (a sweep's accuracy against depth, width or size)
from bnonly.runs.run_reader import RunError, read_gamma_run, read_run, run_folders  # noqa: E402  (run folders as dicts)
from bnonly.runs.run_groups import (  # noqa: E402  (seed groups and legend labels)
    SEED_KEYS, canonical, differing_settings, display_value, file_token, group_ignore, group_labels, group_runs,
    leading_settings, results_table, run_labels, settings, shared_title, unique_prefixes)

SPLITS = ("train", "val", "test")
METRIC_LABELS = {"loss": "loss", "acc": "accuracy (%)", "acc5": "top-5 accuracy (%)"}  # acc5: held-out splits only
METRIC_WORDS = {"loss": "loss", "acc": "accuracy", "acc5": "top-5 accuracy"}
FIGURE_SIZE = (7, 4.5)  # inches
FIGURE_DPI = 110
HISTOGRAM_BINS = 40  # bars per γ or β histogram
DEFAULT_OUT = "tmp"
BAND_ALPHA = 0.2  # opacity of the ±1 std band around a seed group's mean
LEGEND_WRAP = 60  # characters: longer legend labels are wrapped and set smaller


# ---------------------------------------------------------------- planning

def line(run, column, label, color, linestyle="-"):
    """Return one curve: `column` of a run's (or group's) history against its epochs.

    `std` is the group's per-epoch std of that column (drawn as a band), None for a run.
    """
    return {"label": label, "epochs": run["history"]["epoch"], "values": run["history"][column],
            "std": run.get("std", {}).get(column), "color": color, "linestyle": linestyle}


def color_of(index):
    """Return the default-cycle colour of the index-th curve ('C0', 'C1', ...)."""
    return f"C{index % 10}"


def plan_run_plots(run, prefix):
    """Return the loss and accuracy plots of one run: its train, val and test curves."""
    title = shared_title([run]) or run["name"]
    plots = []
    for metric, ylabel in METRIC_LABELS.items():
        columns = [f"{split}_{metric}" for split in SPLITS]
        present = [column for column in columns if column in run["history"]]
        if not present:  # top-5: runs recorded before it, or with no held-out split
            continue
        lines = [line(run, column, column.split("_")[0], color_of(index))
                 for index, column in enumerate(present)]
        plots.append({"filename": f"{prefix}_{metric}.png", "title": title,
                      "ylabel": ylabel, "lines": lines, "phases": analysis.phase_marks([run["history"]])})
    return plots


def plan_overlay_plots(runs, names=None):
    """Return one plot per split and metric present in any run or group, one line (or band) each, labelled
    by `names` (one per group, from --label) or else by the settings in which the groups differ."""
    labels = group_labels(runs) if names is None else \
        [name + analysis.seeds_note(group) for name, group in zip(names, runs)]
    context = shared_title(runs)
    phases = analysis.phase_marks([run["history"] for run in runs])
    plots = []
    for split in SPLITS:
        for metric, ylabel in METRIC_LABELS.items():
            column = f"{split}_{metric}"
            lines = [line(run, column, label, color_of(index))
                     for index, (run, label) in enumerate(zip(runs, labels))
                     if column in run["history"]]
            if not lines:
                continue
            title = f"{split} {METRIC_WORDS[metric]}" + (f" ({context})" if context else "")
            plots.append({"filename": f"{column}.png", "title": title,
                          "ylabel": ylabel, "lines": lines, "phases": phases})
    return plots


def comparison_key(runs, ignore=frozenset()):
    """Return the one setting (not in `ignore`) in which the runs (or groups) differ, or None.

    None also when a run has no config or two runs share the value, since the
    picture would then have indistinguishable curves.
    """
    if len(runs) < 2 or any(run["config"] is None for run in runs):
        return None
    configs = [run["config"] for run in runs]
    keys = leading_settings(differing_settings(configs, ignore), configs)
    if len(keys) != 1:
        return None
    values = [canonical(run["config"].get(keys[0])) for run in runs]
    return keys[0] if len(set(values)) == len(values) else None


def plan_comparison_plots(runs, key, names=None):
    """Return '<A>_vs_<B>' loss and accuracy plots: train dashed, val-or-test solid per run or group; the
    curves are named by `names` (from --label) where given, else by their value of `key`."""
    values = [display_value(key, run["config"].get(key)) for run in runs]
    stem = "_vs_".join(file_token(value) for value in values)
    values = values if names is None else list(names)
    context = shared_title(runs)
    phases = analysis.phase_marks([run["history"] for run in runs])
    plots = []
    for metric, ylabel in METRIC_LABELS.items():
        if metric == "acc5":  # no train_acc5 to draw against: top-5 is recorded for held-out splits only
            continue
        lines = []
        for index, (run, value) in enumerate(zip(runs, values)):
            note = analysis.seeds_note(run)
            lines.append(line(run, f"train_{metric}", f"{value} train{note}", color_of(index), "--"))
            held_out = [split for split in ("val", "test") if f"{split}_{metric}" in run["history"]]
            if held_out:
                lines.append(line(run, f"{held_out[0]}_{metric}", f"{value} {held_out[0]}{note}",
                                  color_of(index)))
        title = f"{key}: {' vs '.join(values)}" + (f" ({context})" if context else "")
        plots.append({"filename": f"{stem}_{metric}.png", "title": title,
                      "ylabel": ylabel, "lines": lines, "phases": phases})
    return plots


def on_axis(run, x):
    """The run with its `epoch` column replaced by the compute axis `x` (see analysis.X_AXES), so curves,
    seed means and phase marks follow that axis; a run without it is a RunError."""
    if x == "epoch":
        return run
    if x not in run["history"]:
        raise RunError(f"no {x.replace('_', '-')} in {run['path']} (its history.csv has no passes or "
                       f"epoch_seconds column, or it has no config.json); plot it with --x epoch")
    return {**run, "history": {**run["history"], "epoch": run["history"][x]}}


def plan_plots(runs, x="epoch", names=None):
    """Return every plot to draw for `runs` (dicts: filename, title, xlabel, ylabel, lines, phases).

    Per-run plots for each run; overlays and comparisons per seed group (see `group_runs`), their curves
    named by `names` (one per group, in first-seen order) where given.
    `x` names the horizontal axis the runs were put on (on_axis); other than epochs, the file names end
    in `_by_<x>`. File names are unique within the result: a later clash gets '_2', '_3', ...
    """
    plots = []
    for run, prefix in zip(runs, unique_prefixes(runs)):
        plots += plan_run_plots(run, prefix)
    if len(runs) > 1:
        groups = group_runs(runs)
        plots += plan_overlay_plots(groups, names)
        key = comparison_key(groups, group_ignore(groups))
        if key is not None:
            plots += plan_comparison_plots(groups, key, names)
    seen = set()
    for plot in plots:
        plot["xlabel"] = analysis.X_AXES[x]
        if x != "epoch":
            plot["filename"] = plot["filename"][:-len(".png")] + f"_by_{x}.png"
        stem, name, count = plot["filename"][:-len(".png")], plot["filename"], 1
        while name in seen:
            count += 1
            name = f"{stem}_{count}.png"
        plot["filename"] = name
        seen.add(name)
    return plots


# ---------------------------------------------------------------- drawing

def draw_phases(ax, phases):
    """Mark each phase switch with a dotted vertical line and a small 'bn → all' label."""
    for mark in phases:
        ax.axvline(mark["epoch"], color="0.35", linestyle=":", linewidth=1.2)
        ax.text(mark["epoch"], 0.98, f" {mark['label']}", transform=ax.get_xaxis_transform(),
                fontsize=8, color="0.25", ha="left", va="top")


@contextlib.contextmanager
def saved_figure(path, *grid, **options):
    """plt.subplots(*grid, dpi=FIGURE_DPI, **options) -> (figure, axes); on leaving without an error the
    figure is laid out and written to `path`; it is closed either way."""
    fig, axes = plt.subplots(*grid, dpi=FIGURE_DPI, **options)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def draw_plot(plot, path):
    """Draw one planned plot into the PNG file `path`; a curve with `std` gets a ±1 std band."""
    with saved_figure(path, figsize=FIGURE_SIZE) as (fig, ax):
        for curve in plot["lines"]:
            ax.plot(curve["epochs"], curve["values"], color=curve["color"],
                    linestyle=curve["linestyle"], label=textwrap.fill(curve["label"], LEGEND_WRAP), linewidth=1.8,
                    marker="o" if len(curve["epochs"]) == 1 else None)  # 1 point: no line
            if curve.get("std"):
                low = [value - std for value, std in zip(curve["values"], curve["std"])]
                high = [value + std for value, std in zip(curve["values"], curve["std"])]
                ax.fill_between(curve["epochs"], low, high, color=curve["color"], alpha=BAND_ALPHA, linewidth=0)
        draw_phases(ax, plot.get("phases", []))
        ax.set_xlabel(plot.get("xlabel", "epoch"))
        ax.set_ylabel(plot["ylabel"])
        ax.set_title(plot["title"])
        if plot.get("xlabel", "epoch") == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if plot["lines"]:
            long_labels = max(len(curve["label"]) for curve in plot["lines"]) > LEGEND_WRAP
            ax.legend(fontsize="small" if long_labels else None)


def draw_gamma(run, path):
    """Draw histograms of γ (top row) and β (bottom row), one column per stage, into `path`."""
    stats = run["gamma"]
    stages = list(stats["stages"])
    with saved_figure(path, 2, len(stages), figsize=(2.8 * len(stages) + 1, 5.5), squeeze=False) as (fig, axes):
        for column, stage in enumerate(stages):
            for row, (key, symbol) in enumerate((("gamma", "γ"), ("beta", "β"))):
                ax = axes[row][column]
                ax.hist(stats["stages"][stage][key], bins=HISTOGRAM_BINS, color=color_of(column))
                ax.set_title(f"{stage}: {symbol}", fontsize=10)
                ax.grid(True, alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("channels")
        fig.suptitle(f"BatchNorm γ and β per stage ({shared_title([run]) or run['name']})")


def draw_disabled(run, path):
    """Draw the fraction of channels with |γ| < threshold per BN layer, in model order, into `path`."""
    stats = run["gamma"]
    layers = list(stats["layers"])
    with saved_figure(path, figsize=(max(FIGURE_SIZE[0], 0.2 * len(layers) + 2), FIGURE_SIZE[1])) as (fig, ax):
        for index, stage in enumerate(stats["stages"]):
            positions = [i for i, layer in enumerate(layers) if analysis.stage_of(layer) == stage]
            ax.bar(positions, [stats["layers"][layers[i]] for i in positions], color=color_of(index), label=stage)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.set_ylim(0, max(0.05, min(1.0, 1.15 * max(stats["layers"].values()))))  # small fractions stay visible
        ax.set_ylabel(f"fraction with |γ| < {stats['threshold']:g}")
        ax.set_title(f"{shared_title([run]) or run['name']}: {stats['overall']:.1%} of BN channels "
                     f"have |γ| < {stats['threshold']:g}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()


def drawings(runs, gamma=False, x="epoch", names=None):
    """Return [(file name, function drawing into a path)]: the curves (against `x`, the axis the runs were
    put on; seed groups named by `names` where given), or with `gamma` two γ pictures per run."""
    if not gamma:
        return [(plot["filename"], functools.partial(draw_plot, plot)) for plot in plan_plots(runs, x, names)]
    pairs = []
    for run, prefix in zip(runs, unique_prefixes(runs)):
        pairs += [(f"{prefix}_gamma.png", functools.partial(draw_gamma, run)),
                  (f"{prefix}_disabled.png", functools.partial(draw_disabled, run))]
    return pairs


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="plots.py", description="Plot loss and accuracy curves of run folders.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folder holding history.csv (and config.json)")
    parser.add_argument("--out", default=None,
                        help=f"folder for the PNG files (created; default {DEFAULT_OUT}/)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--table", action="store_true",
                      help="print a markdown table of final and best metrics per seed group (mean ± std); "
                           "draws the curves too only when --out is given")
    parser.add_argument("--x", choices=tuple(analysis.X_AXES), default="epoch",
                        help="horizontal axis of the curves: epoch, image_passes (compute: images through "
                             "forward+backward, forward-only ones at half that) or wall_seconds; plots by "
                             "compute compare optimizers whose epochs cost different amounts")
    mode.add_argument("--gamma", action="store_true",
                      help="draw BatchNorm γ/β histograms per stage and the disabled fraction per layer "
                           "from each run's checkpoint.pt instead of the curves")
    parser.add_argument("--across", metavar="AXIS",
                        help="instead of curves: final accuracy and disabled BN features against AXIS, one "
                             "line per training mode (and other setting that varies), mean ± std over seeds: "
                             "depth, width, trainable_params, or any numeric setting (files <AXIS>_acc.png, "
                             "<AXIS>_disabled.png; with --table the markdown table of the same numbers)")
    parser.add_argument("--label", action="append", metavar="TEXT",
                        help="name of a seed group (or lone run) in the legends and the table, instead of the "
                             "settings in which they differ; once per group, in the order the groups' first "
                             "runs are given (e.g. --label SGD --label Adam)")
    return parser


def checked_names(runs, names):
    """`names` (the --label texts) when there is one per seed group of `runs`; else a RunError that lists
    the groups in order."""
    if names is None:
        return None
    groups = group_runs(runs)
    if len(names) != len(groups):
        raise RunError(f"{len(names)} --label given for {len(groups)} seed group(s) "
                       f"({', '.join(group['name'] for group in groups)}); give one per group, in that order")
    return names


def across_lines(runs, axis):
    """sweep_plots.series with this file's seed groups: a line is every run alike but in seed and axis."""
    ignore = SEED_KEYS | set(sweep_plots.axis_settings(axis))

    def line_key(run):
        return canonical({k: v for k, v in settings(run["config"] or {}).items() if k not in ignore})

    def line_label(firsts):
        if len(firsts) == 1:
            return [f"trainable={display_value('trainable', (firsts[0]['config'] or {}).get('trainable'))}"]
        return run_labels(firsts, ignore)

    return sweep_plots.series(runs, axis, line_key, line_label)


def main(argv=None):
    """Read every run first, then print the table and/or draw; print each written path. Errors exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.across and args.gamma:
        parser.exit(2, f"{parser.prog}: error: --across and --gamma draw different pictures; give one\n")
    if args.label and (args.across or args.gamma):
        parser.exit(2, f"{parser.prog}: error: --label names the curves' seed groups; it does not go with "
                       f"--{'across' if args.across else 'gamma'}\n")
    try:
        folders = run_folders(args.run_dirs)
        runs = [(read_gamma_run if args.gamma else read_run)(path) for path in folders]
        if not args.gamma:
            runs = [on_axis(run, args.x) for run in runs]
        if args.across:
            return across(runs, args.across, args.table, args.out, parser)
        names = checked_names(runs, args.label)
    except RunError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.table:
        print(results_table(runs, names))
        if args.out is None:
            return
    out = args.out or DEFAULT_OUT
    try:
        os.makedirs(out, exist_ok=True)
        for filename, draw in drawings(runs, args.gamma, args.x, names):
            path = os.path.join(out, filename)
            draw(path)
            print(path)
    except OSError as e:
        parser.exit(2, f"{parser.prog}: error: cannot write ({e.strerror}) in {out}; "
                       "pick a writable --out folder\n")


def across(runs, axis, table, out, parser):
    """--across: the table and/or the two pictures of final accuracy and disabled features against `axis`."""
    lines = across_lines(runs, axis)
    if not lines:
        raise RunError(f"no run has a numeric value of {axis} in its config.json; choose depth, width, "
                       f"trainable_params or a numeric setting")
    if table:
        print(sweep_plots.across_table(lines, axis))
        if out is None:
            return
    out = out or DEFAULT_OUT
    try:
        os.makedirs(out, exist_ok=True)
        for metric, suffix in (("final_acc", "acc"), ("disabled", "disabled")):
            path = os.path.join(out, f"{file_token(axis)}_{suffix}.png")
            sweep_plots.draw_across(lines, axis, metric, path, saved_figure)
            print(path)
    except OSError as e:
        parser.exit(2, f"{parser.prog}: error: cannot write ({e.strerror}) in {out}; pick a writable --out folder\n")
