"""A sweep's summary figure: final accuracy against a numeric setting (depth, width, trainable parameters,
or any other), one line per training mode and seed group, mean ± std over the seeds, as in the BN-only
paper's figures; the fraction of BatchNorm features switched off (|γ| < 0.01) against the same axis; and
the markdown table of the same numbers. plots.py calls this with --across AXIS.

Pure functions on runs as run_reader.read_run returns them ({'name', 'config', 'history', 'summary'}); only
`draw_across` touches matplotlib.
"""

import math

from bnonly.runs import analysis
from bnonly.config import arch_depth, imagenet_depth

# axis -> (label, the settings it stands for: runs that differ only in them lie on one line)
ACROSS = {"depth": ("depth (layers)", ("arch",)), "width": ("width (channels x K)", ("width",)),
          "trainable_params": ("trainable parameters", ("arch", "width"))}


def axis_value(run: dict, axis: str) -> float:
    """A run's position on `axis`: the depth of its arch, its trainable parameter count (summary.json), or
    any numeric setting of config.json; NaN when the run has none."""
    config = run["config"] or {}
    if axis == "depth":
        depth = arch_depth(config.get("arch", "")) or imagenet_depth(config.get("arch", ""))
        return float(depth) if depth else math.nan
    if axis == "trainable_params":
        return float((run.get("summary") or {}).get("trainable_params", math.nan))
    value = config.get(axis)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def axis_settings(axis: str) -> tuple:
    return ACROSS.get(axis, ("", (axis,)))[1]


def final_metrics(run: dict) -> dict:
    """Final and best held-out accuracy (val, else test) and the disabled-feature fraction of one run."""
    split = analysis.held_out_split([run["history"]])
    table = analysis.run_metrics(run["history"], split)  # the numbers of plots.py --table
    disabled = ((run.get("summary") or {}).get("disabled_features") or {}).get("overall")
    return {name: math.nan if value is None else float(value) for name, value in
            (("final_acc", table["final_acc"]), ("best_acc", table["best_acc"]), ("disabled", disabled))}


def series(runs: list, axis: str, line_key, line_label) -> list:
    """[{'label', 'points': [{'x', 'runs', metric: (mean, std) ...}]}], one per line, points sorted by x.

    `line_key(run)`: the settings a line shares (all but the seed and the axis's own); `line_label(runs)`:
    one label per line from its first run. Runs without a value on the axis are left out.
    """
    lines = {}
    for run in runs:
        x = axis_value(run, axis)
        if not math.isnan(x):
            lines.setdefault(line_key(run), {}).setdefault(x, []).append(run)
    labels = line_label([next(iter(points.values()))[0] for points in lines.values()])
    result = []
    for label, points in zip(labels, lines.values()):
        rows = []
        for x in sorted(points):
            metrics = [final_metrics(run) for run in points[x]]
            rows.append({"x": x, "runs": points[x],
                         **{name: analysis.mean_std([m[name] for m in metrics])
                            for name in ("final_acc", "best_acc", "disabled")}})
        result.append({"label": label, "points": rows})
    return result


def cell(mean_std: tuple, scale: float = 1.0, decimals: int = 2) -> str:
    mean, std = mean_std
    if math.isnan(mean):
        return analysis.MISSING
    return f"{mean * scale:.{decimals}f}" + ("" if math.isnan(std) else f" ± {std * scale:.{decimals}f}")


def across_table(lines: list, axis: str) -> str:
    """Markdown: one row per line and axis value, mean ± std over the seeds."""
    header = ["run", axis, "n", "final acc (%)", "best acc (%)", "|γ| < 0.01 (%)"]
    rows = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for line in lines:
        for point in line["points"]:
            x = f"{point['x']:,.0f}" if float(point["x"]).is_integer() else f"{point['x']:g}"
            rows.append(f"| {line['label']} | {x} | {len(point['runs'])} | {cell(point['final_acc'])} | "
                        f"{cell(point['best_acc'])} | {cell(point['disabled'], 100, 1)} |")
    return "\n".join(rows)


def draw_across(lines: list, axis: str, metric: str, path: str, saved_figure) -> None:
    """Mean ± std against the axis, one line per series; `saved_figure` is plots.saved_figure."""
    label = ACROSS.get(axis, (axis,))[0]
    ylabel = {"final_acc": "final held-out accuracy (%)", "disabled": "BN features with |γ| < 0.01 (%)"}[metric]
    scale = 100.0 if metric == "disabled" else 1.0
    with saved_figure(path) as (fig, ax):
        for line in lines:
            xs = [point["x"] for point in line["points"]]
            means = [point[metric][0] * scale for point in line["points"]]
            stds = [0.0 if math.isnan(point[metric][1]) else point[metric][1] * scale for point in line["points"]]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=line["label"])
        if axis in ("depth", "trainable_params", "width"):
            ax.set_xscale("log")
            ax.set_xticks(sorted({point["x"] for line in lines for point in line["points"]}))
            ax.xaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
            ax.xaxis.set_minor_formatter(lambda value, _: "")  # only the axis values are labelled
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
