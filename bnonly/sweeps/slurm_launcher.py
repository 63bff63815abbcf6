"""sweep.py --launcher slurm: every run of a sweep one task of a Slurm job array, through submitit (the
launcher of Hydra's and of most PyTorch research code's cluster jobs; `pip install submitit`).

A task runs train.py as a child process and waits for it. When Slurm preempts the task or its time
runs out, submitit signals the task and calls `RunJob.checkpoint`: the child gets SIGTERM, writes
its checkpoint and exits, and submitit requeues the task, which then continues the run with
--resume. This file knows nothing of grids; sweep.py hands it the commands.
"""

import os
import signal
import subprocess
import time

import submitit

CHILD_STOP_SECONDS = 120  # how long a preempted task waits for train.py to write its checkpoint


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job: `start` (a command) the first time, `resume` once the folder holds a
    checkpoint. Returns train.py's exit status."""

    def __init__(self, folder: str, start: list, resume: list, log_file: str, cwd: str):
        self.folder, self.start, self.resume, self.log_file, self.cwd = folder, start, resume, log_file, cwd
        self.process = None

    def __call__(self) -> int:
        command = self.resume if os.path.exists(os.path.join(self.folder, "checkpoint.pt")) else self.start
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, self.log_file), "a") as log:
            log.write(f"== {time.strftime('%F %T')} submitit job {os.environ.get('SLURM_JOB_ID', 'local')}: "
                      f"{' '.join(command)}\n")
            log.flush()
            # a session of its own: Slurm's preemption signal goes to the task's process group, and would
            # kill train.py before it could checkpoint; the task passes it on as SIGTERM (checkpoint below)
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                            start_new_session=True)
            while self.process.poll() is None:  # not wait(): checkpoint() may run inside it, as a signal handler
                time.sleep(0.5)
            return self.process.returncode

    def checkpoint(self, *args, **kwargs):
        """Preempted or timed out (submitit calls this in a signal handler): let train.py write its checkpoint,
        then requeue this same job, which resumes it."""
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + CHILD_STOP_SECONDS
            while os.waitpid(self.process.pid, os.WNOHANG) == (0, 0):  # Popen's own wait may hold its lock here
                if time.monotonic() > deadline:  # the last saved checkpoint stays intact
                    os.kill(self.process.pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        return submitit.helpers.DelayedSubmission(RunJob(self.folder, self.start, self.resume, self.log_file,
                                                         self.cwd))

    def __getstate__(self):
        return {**self.__dict__, "process": None}  # a process does not travel to the requeued task


def executor(folder: str, cluster, options: dict):
    """A submitit executor writing its files into `folder`; cluster None finds Slurm, "local" runs the
    tasks as local processes (what the tests use)."""
    result = submitit.AutoExecutor(folder=folder, cluster=cluster)
    result.update_parameters(**{name: value for name, value in options.items() if value is not None})
    return result


def submit(jobs: list, folder: str, cluster=None, options=None) -> list:
    """Submit RunJobs as one job array; returns the submitit jobs in the same order."""
    pool = executor(folder, cluster, options or {})
    return pool.submit_array(jobs)


def job_state(folder: str, job_id: str) -> str:
    """Slurm's state of a submitted job (e.g. PENDING, RUNNING, COMPLETED), 'UNKNOWN' when not known."""
    try:
        return submitit.SlurmJob(folder=folder, job_id=job_id).state
    except Exception:  # no Slurm here, or a job Slurm forgot: the run folder then says where the run is
        return "UNKNOWN"
