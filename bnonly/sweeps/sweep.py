"""Run a grid of train.py runs: the paper's experiments as one command.

    python sweep.py experiments/cpu_demo.yaml                 # every run of the grid, one after another
    python sweep.py GRID.yaml --parallel 2 --out sweeps/mine  # two at a time, threads split between them
    python sweep.py GRID.yaml --dry-run                       # the runs and their commands, nothing started
    python sweep.py GRID.yaml --launcher slurm --partition gpu --time-min 600   # a Slurm job array (submitit)

A grid file holds `base:` (settings every run shares) and `axes:` (setting -> list of values); the runs
are the product of the axes. Setting names are those of train.py's flags and --config files. Each run
gets a folder under the sweep folder (default sweeps/<grid file name>), named from its values on the axes
(`arch=resnet14,trainable=bn,seed=0`, as Hydra names its multirun folders), with train.py's run files and
the launcher's `train.log` and `sweep_status.json`.

Giving the same command again is safe: finished runs are skipped, interrupted ones continue with
--resume, failed ones are reported and left alone unless --retry-failed. One run failing never stops
the others. The sweep ends with a summary. This file only builds settings and starts train.py
processes; it never imports the trainer, and run folders are the only interface to plots.py.
"""

import argparse
import dataclasses
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from bnonly import ROOT, config
from bnonly.choices import FOLDER_DATASETS
from bnonly.stopping import GracefulStop

# set by the sweep for every run, so a grid may not
RESERVED = ("save_dir", "resume", "overwrite", "config", "evaluate")
STATUS_FILE = "sweep_status.json"  # the launcher's record of a run's last attempt
LOG_FILE = "train.log"  # train.py's output, every attempt appended
TRAIN = os.path.join(ROOT, "train.py")


class SweepError(ValueError):
    """A bad grid file or option; its message is one line."""


@dataclasses.dataclass
class Run:
    name: str  # the folder name, from the run's values on the axes
    settings: dict  # field name -> value, base and axes together
    folder: str


def read_grid(path: str, overrides=()) -> tuple:
    """(base, axes) from a grid file, with names as Config fields and values checked as --config does;
    `overrides` ("name=value" texts, from --set) replace base settings, or an axis by one value."""
    try:
        values = config.read_config_file(path)  # any mapping; its keys normalised like --config keys
    except config.ConfigError as e:
        raise SweepError(str(e).replace("--config", "grid file")) from None
    unknown = set(values) - {"base", "axes"}
    if unknown or "axes" not in values:
        raise SweepError(f"grid file {path} must hold 'axes:' (setting: [values...]) and may hold 'base:' "
                         f"(setting: value); found {', '.join(sorted(values)) or 'nothing'}")
    base, axes = values.get("base") or {}, values["axes"]
    if not isinstance(base, dict) or not isinstance(axes, dict) or not axes:
        raise SweepError(f"grid file {path}: 'base' must be a mapping and 'axes' a non-empty mapping")
    base, axes = settings_of(base, f"grid file {path}"), settings_of(axes, f"grid file {path}")
    for name, options in axes.items():
        if not isinstance(options, list) or not options:
            raise SweepError(f"grid file {path}: axis {name} must be a non-empty list of values")
    overlap = set(base) & set(axes)
    if overlap:
        raise SweepError(f"grid file {path}: {', '.join(sorted(overlap))} is both in base and in axes")
    for text in overrides:
        name, equals, value = text.partition("=")
        if not equals:
            raise SweepError(f"--set {text}: expected NAME=VALUE, e.g. --set data_dir=/data/cifar")
        (name, value), = settings_of({name: value}, f"--set {text}").items()
        if name in axes:
            axes[name] = [value]  # still an axis, so the run folders keep its value in their names
        else:
            base[name] = value
    try:
        axes = {name: [config.coerce(name, value) for value in options] for name, options in axes.items()}
        base = {name: config.coerce(name, value) for name, value in base.items()}
    except config.ConfigError as e:
        raise SweepError(str(e).replace("--config file", f"grid file {path}")) from None
    return base, axes


def settings_of(mapping: dict, where: str) -> dict:
    """Keys as Config field names (flag spellings and aliases allowed); the sweep's own are refused."""
    names = {config.setting_name(key): value for key, value in mapping.items()}
    for name in names:
        if name not in config.FIELDS:
            raise SweepError(f"{where}: unknown setting {name!r}; see train.py --help for the names")
        if name in RESERVED:
            raise SweepError(f"{where}: {name} is set by the sweep for every run; leave it out")
    return names


def expand(base: dict, axes: dict, out: str) -> list:
    """One Run per point of the product of the axes, in the grid's order (the first axis slowest), named
    from its value on every axis."""
    runs = []
    for point in itertools.product(*axes.values()):
        chosen = dict(zip(axes, point))
        name = ",".join(f"{key}={folder_text(value)}" for key, value in chosen.items())
        runs.append(Run(name, {**base, **chosen}, os.path.join(out, name)))
    return runs


def folder_text(value) -> str:
    """A value as it appears in a folder name: letters, digits and . + - only."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", flag_value(value)) or "none"


def flag_value(value) -> str:
    """A setting's value as train.py's command line takes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):  # --milestones 80,120, --betas 0.9,0.999, --phases bn:5,all:155
        return ",".join(":".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
    return str(value)


def passed(settings: dict) -> dict:
    """The settings that reach train.py's command line: not those left at None, nor a store_true flag
    that is false."""
    return {name: value for name, value in settings.items() if value is not None and
            not (value is False and config.FIELDS[name].metadata.get("action") == "store_true")}


def flags(settings: dict) -> list:
    """train.py's command-line flags for `settings` (field name -> value)."""
    args = []
    for name, value in passed(settings).items():
        flag = "--" + name.replace("_", "-")
        action = config.FIELDS[name].metadata.get("action")
        if action == "store_true":
            args.append(flag)
        elif action is argparse.BooleanOptionalAction:
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, flag_value(value)]
    return args


def state_of(run: Run) -> str:
    """done | failed | interrupted | new, or conflict (the folder holds a run of other settings), from the
    run folder."""
    def load(name):
        try:
            with open(os.path.join(run.folder, name)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    settings, summary = load("config.json"), load("summary.json")
    if settings and any(name not in config.RUNTIME_SETTINGS and settings.get(name) != value
                        for name, value in run.settings.items()):
        return "conflict"
    if settings and summary and summary.get("epochs_completed", 0) >= settings.get("epochs", float("inf")):
        return "done"
    status = load(STATUS_FILE)
    if status and status.get("status") in ("failed", "submitted"):
        return {"failed": "failed", "submitted": "queued"}[status["status"]]
    return "interrupted" if os.path.exists(os.path.join(run.folder, "checkpoint.pt")) else "new"


def check_runs(runs: list, states: dict) -> None:
    """Resolve and validate the settings of every run about to start afresh (new, or failed and retried)
    with train.py's own code (config.resolve: ranges, combinations, the dataset's defaults; no torch), and
    check that a folder dataset's DATA_DIR/train exists; SweepError naming the first bad run and its
    setting. Interrupted runs resume from their checkpoint, which train.py checks."""
    for run in runs:
        if states[run.name] not in ("new", "failed"):
            continue
        given = passed(run.settings)  # as train.py will be given them
        try:
            cfg = config.resolve(config.Config(**given), set(given))
        except config.ConfigError as e:
            raise SweepError(f"run {run.name}: {e}") from None
        train = os.path.join(os.path.expanduser(cfg.data_dir), "train")
        if cfg.dataset in FOLDER_DATASETS and not os.path.isdir(train):
            raise SweepError(f"run {run.name}: no folder {train}; --dataset {cfg.dataset} needs "
                             f"DATA_DIR/train/<class>/ (--set data_dir=...)")


def resume_command(run: Run) -> list:
    return [sys.executable, TRAIN, "--resume", run.folder, "--no-progress"]


def command(run: Run, state: str) -> list:
    """The train.py command that starts or continues `run`."""
    if state in ("interrupted", "failed", "queued") and os.path.exists(os.path.join(run.folder, "checkpoint.pt")):
        return resume_command(run)
    # a run that failed before its first epoch left only config.json: replace it; any history is kept (train.py
    # then refuses the folder, and the run is reported as failed)
    def has(name):
        return os.path.exists(os.path.join(run.folder, name))
    overwrite = has("config.json") and not has("history.csv")
    return [sys.executable, TRAIN, *flags(run.settings), "--no-progress", "--save-dir", run.folder,
            *(["--overwrite"] if overwrite else [])]


def last_error(log: str, start: int) -> str:
    """The last non-empty line this attempt wrote to the log."""
    with open(log, errors="replace") as fh:
        fh.seek(start)
        lines = [line.strip() for line in fh.read().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def write_status(run: Run, status: str, exit_code=None, error: str = "", **more) -> None:
    path = os.path.join(run.folder, STATUS_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump({"status": status, "exit_code": exit_code, "error": error, "time": time.strftime("%F %T"),
                   **more}, fh)
    os.replace(path + ".tmp", path)


def slots(parallel: int, gpus: int, runs_per_gpu: int, cpus: int) -> list:
    """The environment of each place a run can go: a GPU share, or a share of the CPU's threads."""
    places = [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in range(gpus) for _ in range(runs_per_gpu)] if gpus \
        else [{} for _ in range(parallel)]
    for place in places:
        place["OMP_NUM_THREADS"] = str(max(1, cpus // len(places)))
    return places


class Stop(GracefulStop):
    """SIGINT/SIGTERM to the sweep: start nothing more, ask the running runs to checkpoint and stop."""

    def __init__(self):
        super().__init__()
        self.children = []

    def handle(self, signum, frame):
        self.signal = self.signal or signum
        for child in self.children:  # a terminal's Ctrl-C reached them too; SIGTERM after it changes nothing
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)


def launch_local(todo: list, states: dict, places: list) -> int:
    """Run `todo` with at most one run per place; returns the signal that stopped the sweep, or 0."""
    waiting, running = list(todo), {}  # process -> (run, place, log offset)
    with Stop() as stop:
        while running or (waiting and stop.signal is None):
            free = [place for place in places if all(place is not p for _, p, _ in running.values())]
            while waiting and free and stop.signal is None:
                run, place = waiting.pop(0), free.pop(0)
                os.makedirs(run.folder, exist_ok=True)
                log_path = os.path.join(run.folder, LOG_FILE)
                args = command(run, states[run.name])
                with open(log_path, "a") as log:
                    log.write(f"== {time.strftime('%F %T')} {' '.join(args)}\n")
                    start = log.tell()
                    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **place})
                running[process] = (run, place, start)
                stop.children.append(process)
                print(f"started  {run.name}", flush=True)
            for process in [p for p in running if p.poll() is not None]:
                run, _, start = running.pop(process)
                stop.children.remove(process)
                states[run.name] = record(run, process.returncode, start)
                print(f"{states[run.name]:<8} {run.name}", flush=True)
            time.sleep(0.1)
    return stop.signal or 0


def record(run: Run, exit_code: int, log_start: int) -> str:
    """The run's state after an attempt ended with `exit_code`, written to its status file."""
    if exit_code == 0:
        state = "done"
    elif exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM) and os.path.exists(
            os.path.join(run.folder, "checkpoint.pt")):
        state = "interrupted"
    else:
        state = "failed"
    error = last_error(os.path.join(run.folder, LOG_FILE), log_start) if state == "failed" else ""
    write_status(run, state, exit_code, error)
    return state


def summary(out: str, runs: list, states: dict, finished_now: int) -> str:
    """One screen: how many runs are in each state, the failed ones with their last error line."""
    count = {state: sum(states[run.name] == state for run in runs)
             for state in ("done", "failed", "interrupted", "new", "conflict", "queued")}
    lines = [f"sweep {out}: {len(runs)} runs, {count['done']} done ({finished_now} in this call), "
             f"{count['failed']} failed, {count['interrupted'] + count['new']} to run"
             + (f", {count['queued']} queued on the cluster" if count["queued"] else "")
             + (f", {count['conflict']} in the way" if count["conflict"] else "")]
    for run in runs:
        if states[run.name] == "failed":
            with open(os.path.join(run.folder, STATUS_FILE)) as fh:
                status = json.load(fh)
            lines.append(f"  failed   {run.name} (exit {status['exit_code']}): {status['error']}")
        elif states[run.name] == "conflict":
            lines.append(f"  in the way {run.name}: its folder holds a run made with other settings (see its "
                         f"config.json); left alone: give another --out")
    waiting = [run.name for run in runs if states[run.name] in ("interrupted", "new")]
    lines += [f"  to run   {name}" for name in waiting[:20]] + ([f"  ... and {len(waiting) - 20} more"] if
                                                                   len(waiting) > 20 else [])
    if count["failed"]:
        lines.append("  (their logs: RUN_DIR/train.log; --retry-failed runs them again)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = config.OneLineParser(prog="sweep.py", description="Run a grid of train.py runs (see the module doc).")
    parser.add_argument("grid", help="YAML or JSON grid file: base: {setting: value}, axes: {setting: [values]}")
    parser.add_argument("--out", help="sweep folder (default sweeps/<grid file name>)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a setting "
                        "of the grid for every run (an axis becomes that one value), e.g. --set data_dir=/data; "
                        "repeatable")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run the failed runs again (resumed if they "
                        "have a checkpoint)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time on the CPU; the CPU's threads are "
                        "split between them (default 1)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use, one run per GPU (default: all that "
                        "nvidia-smi lists; 0 for the CPU)")
    parser.add_argument("--runs-per-gpu", type=int, default=1, help="runs side by side on each GPU (default 1)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local", help="local: on this machine "
                        "(default); slurm: one Slurm job array through submitit, waiting for it to finish "
                        "(preempted or timed-out tasks are requeued and resume)")
    slurm = parser.add_argument_group("slurm launcher")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time-min", type=int, default=24 * 60, help="time limit of each run, minutes (default "
                       "1440; a run that hits it is requeued and resumes)")
    slurm.add_argument("--gpus-per-run", type=int, default=1, help="GPUs of each task (default 1)")
    slurm.add_argument("--cpus-per-run", type=int, default=4, help="CPU cores of each task (default 4)")
    slurm.add_argument("--array-parallelism", type=int, default=None, help="tasks of the array running at once "
                       "(default: Slurm's)")
    slurm.add_argument("--cluster", choices=("slurm", "local"), default=None, help=argparse.SUPPRESS)  # tests: local
    return parser


def launch_slurm(todo: list, states: dict, out: str, args) -> None:
    """Submit `todo` as one job array through submitit, wait for every task, record how each run ended."""
    try:
        from bnonly.sweeps import slurm_launcher
    except ImportError:
        raise SweepError("--launcher slurm needs submitit, which is not installed: pip install submitit") from None
    starts, jobs = {}, []
    for run in todo:
        os.makedirs(run.folder, exist_ok=True)
        log = os.path.join(run.folder, LOG_FILE)
        starts[run.name] = os.path.getsize(log) if os.path.exists(log) else 0
        jobs.append(slurm_launcher.RunJob(run.folder, command(run, "new"), resume_command(run), LOG_FILE,
                                          os.getcwd()))  # relative paths in the grid mean what they mean here
    options = {"timeout_min": args.time_min, "slurm_partition": args.partition, "gpus_per_node": args.gpus_per_run,
               "cpus_per_task": args.cpus_per_run, "slurm_array_parallelism": args.array_parallelism,
               "name": "sweep-" + os.path.basename(os.path.abspath(out))}
    submitted = slurm_launcher.submit(jobs, os.path.join(out, ".submitit"), args.cluster, options)
    for run, job in zip(todo, submitted):
        write_status(run, "submitted", job_id=job.job_id)
        print(f"submitted {run.name} (job {job.job_id})", flush=True)
    for run, job in zip(todo, submitted):
        try:
            exit_code = job.result()
        except Exception as e:  # submitit's own failure (the task died, or was not requeued): say so
            write_status(run, "failed", None, f"submitit job {job.job_id}: {str(e).strip().splitlines()[-1][:300]}")
            states[run.name] = "failed"
        else:
            states[run.name] = record(run, exit_code, starts[run.name])
        print(f"{states[run.name]:<8} {run.name}", flush=True)


def refresh_queued(runs: list, states: dict, out: str) -> None:
    """A run recorded as submitted stays 'queued' while Slurm still has its job; otherwise its folder says
    where it is (the sweep that waited for it may have been stopped)."""
    queued = [run for run in runs if states[run.name] == "queued"]
    if not queued:
        return
    try:
        from bnonly.sweeps import slurm_launcher
    except ImportError:
        slurm_launcher = None
    for run in queued:
        with open(os.path.join(run.folder, STATUS_FILE)) as fh:
            job_id = json.load(fh).get("job_id")
        alive = slurm_launcher is not None and slurm_launcher.job_state(os.path.join(out, ".submitit"), str(job_id)) \
            in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")
        if not alive:
            os.remove(os.path.join(run.folder, STATUS_FILE))
            states[run.name] = state_of(run)


def visible_gpus() -> int:
    """GPUs that nvidia-smi lists (0 without it), without importing torch."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("parallel", "runs_per_gpu"):
            if getattr(args, name) < 1:
                raise SweepError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        if args.gpus is not None and args.gpus < 0:
            raise SweepError(f"--gpus must be 0 or more, got {args.gpus}")
        out = os.path.abspath(args.out or os.path.join("sweeps", os.path.splitext(os.path.basename(args.grid))[0]))
        runs = expand(*read_grid(args.grid, args.set), out)
    except SweepError as e:
        config.fail(str(e), prog="sweep.py")
    states = {run.name: state_of(run) for run in runs}
    refresh_queued(runs, states, out)
    todo = [run for run in runs if states[run.name] in ("new", "interrupted") or
            (args.retry_failed and states[run.name] == "failed")]
    try:
        check_runs(todo, states)  # before any run is started or submitted, --dry-run too
    except SweepError as e:
        config.fail(str(e), prog="sweep.py")
    if args.dry_run:
        for run in runs:
            print(f"{states[run.name]:<12} {run.name}")
            if run in todo:
                print("             " + shlex.join(command(run, states[run.name])))
        return 0
    done_before = sum(state == "done" for state in states.values())
    stopped = 0
    if args.launcher == "slurm":
        try:
            launch_slurm(todo, states, out, args)
        except SweepError as e:
            config.fail(str(e), prog="sweep.py")
    else:
        gpus = visible_gpus() if args.gpus is None else args.gpus
        stopped = launch_local(todo, states, slots(args.parallel, gpus, args.runs_per_gpu, os.cpu_count() or 1))
    print(summary(out, runs, states, sum(state == "done" for state in states.values()) - done_before))
    if stopped:
        return 128 + stopped
    return 0 if all(state == "done" for state in states.values()) else 1
