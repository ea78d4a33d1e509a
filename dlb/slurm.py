"""launcher=slurm (configs/launcher/slurm.yaml, docs/slurm.md): hydra-submitit-launcher's SLURM launcher, fitted to
the run (gpus_per_node=null: one GPU per job, none when trainer.device=cpu) and never waiting on a job that cannot
finish: a request no node of the partition can satisfy is refused before submitting, and a job that ended without
its result (not one requeued) ends the sweep with its state and log.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from dlb.errors import ConfigError
from dlb.train import EXIT_PREEMPTED

# Job states in which the job may still write its result; any other state held GRACE_S without a result is final.
WAITING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
           "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
GRACE_S = 15  # a result file written just before the job ended may take this long to show on a shared filesystem
POLL_S = 2


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def check_request(params: dict[str, Any]) -> None:
    """Raise ConfigError when no node of the partition (the default one when None) can ever run one job of `params`
    (hydra.launcher.*), as `sinfo` lists the nodes; nothing when sinfo can't answer (sbatch then reports it)."""
    out = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"])
    if out is None:
        return
    rows = [line.split("|") for line in out.split()]
    names, wanted = sorted({p.rstrip("*") for p, *_ in rows}), params.get("partition")
    partition = wanted or next((p.rstrip("*") for p, *_ in rows if p.endswith("*")), None)
    if partition not in names:
        raise ConfigError(f"hydra.launcher.partition={wanted}: no such partition; use one of {', '.join(names)}"
                          if wanted else "hydra.launcher.partition=null: the cluster has no default partition; "
                          f"name one of {', '.join(names)}")
    gpus_of = lambda gres: sum(int(m) for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))  # noqa: E731
    # (cpus, memory MB, gpus) per node
    nodes = [(int(c.rstrip("+")), int(m.rstrip("+")), gpus_of(g)) for p, c, m, g in rows if p.rstrip("*") == partition]
    tasks = params.get("tasks_per_node") or 1
    cpus, mem_gb, gpus = params.get("cpus_per_task") or 1, params.get("mem_gb"), params.get("gpus_per_node") or 0
    most_cpus, most_mb, most_gpus = (max(n[i] for n in nodes) for i in range(3))
    if cpus * tasks > most_cpus:
        raise ConfigError(f"hydra.launcher.cpus_per_task={cpus}: partition {partition}'s nodes have at most "
                          f"{most_cpus} CPUs for {tasks} task(s); set hydra.launcher.cpus_per_task="
                          f"{max(1, most_cpus // tasks)} or less")
    if mem_gb and mem_gb * 1024 > most_mb:
        raise ConfigError(f"hydra.launcher.mem_gb={mem_gb}: partition {partition}'s nodes have at most "
                          f"{most_mb / 1024:.1f} GB; set hydra.launcher.mem_gb={most_mb // 1024} or less")
    if gpus > most_gpus:
        raise ConfigError(f"hydra.launcher.gpus_per_node={gpus}: partition {partition}'s nodes have "
                          + (f"at most {most_gpus} GPUs; set hydra.launcher.gpus_per_node={most_gpus} or less"
                             if most_gpus else "no GPUs; train on the CPU with trainer.device=cpu, or pick a GPU "
                             "partition with hydra.launcher.partition=<name>"))


def job_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """{job id: SLURM state} for the jobs slurmctld or the accounting database knows; others are left out. None
    when neither answers (slurmctld unreachable for a moment): nothing is known then."""
    base = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    queue = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", base])
    accounting = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", base])  # None without accounting
    if queue is None and accounting is None:
        return None
    states: dict[str, str] = {}
    for line in ((queue or "") + (accounting or "")).split("\n"):
        job, _, state = line.partition("|")
        if job and state:
            states.setdefault(job, state.split()[0])  # squeue first: sacct's "CANCELLED by 0" can lag a requeue
    return states


def wait(jobs: list) -> list:
    """Wait for submitit jobs; returns the ones that ended without a result, after printing a line for each."""
    pending, lost, final_since = list(jobs), [], {}
    while pending:
        states = job_states([j.job_id for j in pending])
        for job in list(pending):
            state = "UNKNOWN" if states is None else states.get(job.job_id, "GONE")
            if job.paths.result_pickle.exists():
                pending.remove(job)
            elif state in WAITING or states is None:
                final_since.pop(job.job_id, None)
            elif time.time() - final_since.setdefault(job.job_id, time.time()) > GRACE_S:
                pending.remove(job)
                lost.append((job, state))
        if pending:
            time.sleep(POLL_S)
    for job, state in lost:
        print(f"dlb: error: SLURM job {job.job_id} ended {state} without a result; its log: {job.paths.stdout} "
              f"(and .err); run the same command again to continue it (finished runs are skipped)",
              file=sys.stderr, flush=True)
    return [job for job, _ in lost]


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra-submitit-launcher's SlurmLauncher.launch with the request fitted and checked first and a wait that
    ends (`launcher` is hydra_plugins.dlb_slurm_launcher.DlbSlurmLauncher)."""
    import submitit

    params = dict(launcher.params)
    if params.get("gpus_per_node") is None:
        params["gpus_per_node"] = 0 if str(launcher.config.trainer.device) == "cpu" else 1
    check_request(params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in queue_keys else f"slurm_{k}": v for k, v in params.items()})
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    job_params = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        print(f"\t#{idx} : {' '.join(filter_overrides(overrides))}", flush=True)
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*job_params))
    print(f"SLURM jobs {', '.join(j.job_id for j in jobs)}; logs in {jobs[0].paths.folder.parent}", flush=True)
    if wait(jobs):
        sys.exit(EXIT_PREEMPTED)  # the runs keep their checkpoints: the same command continues them
    return [j.results()[0] for j in jobs]
