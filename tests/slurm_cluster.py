"""A real one-node SLURM cluster for the tests: this host, its real CPUs and memory, one CPU partition.

    python tests/slurm_cluster.py [DIR]   # start one, print `export SLURM_CONF=...`, stop it on Enter
    python tests/slurm_cluster.py install # only install the packages (.ci/run)

Installs Debian's munge, slurmctld, slurmd and slurm-client where missing (as root), writes munge.key, slurm.conf
and the daemons' state into a folder of its own, starts munged, slurmctld and slurmd in the foreground under
setsid with their pids recorded, and waits until `sinfo` shows the node idle. `stop()` ends each daemon by its pid.
No accounting database: a job's state comes from slurmctld (dlb.slurm asks `scontrol` when `sacct` has nothing).
`EnforcePartLimits=ALL` makes slurmctld reject at submit a request the partition can never satisfy.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "cpu"


class Unavailable(RuntimeError):
    """SLURM can't be installed or started here; the message says why (the tests skip with it)."""


def install() -> None:
    """apt-get the packages whose commands are missing (root only)."""
    if all(shutil.which(c) for c in ("munged", "slurmctld", "slurmd", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("SLURM is not installed and this is not a Debian root shell: "
                          f"apt-get install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """`slurmd -C`'s NodeName line: this host's real CPU layout and memory, as slurmd will find them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    line = next((x for x in out.splitlines() if x.startswith("NodeName=")), None)
    if line is None:
        raise Unavailable(f"slurmd -C printed no NodeName line: {out.strip()!r}")
    return line


class Cluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.node, self.cpus = "", 0

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM's commands (sbatch, sinfo, ...) to reach this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _write(self) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        node = _node_line()
        fields = dict(f.split("=", 1) for f in node.split())
        self.node, self.cpus = fields["NodeName"], int(fields["CPUs"])
        (r / "slurm.conf").write_text(f"""\
ClusterName=dlbtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge.socket
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
EnforcePartLimits=ALL
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=self.env)  # setsid: the daemons outlive no one's terminal
        self.pids[name] = p.pid
        (self.root / f"{name}.daemon-pid").write_text(str(p.pid))

    def _sinfo(self) -> str:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip()

    def start(self, timeout_s: float = 90) -> "Cluster":
        install()
        self._write()
        r = self.root
        self._spawn("munged", ["munged", "-F", "--force", f"--key-file={r}/munge.key", f"--socket={r}/munge.socket",
                               f"--pid-file={r}/munged.pid", f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munge.seed"])
        self._wait(lambda: (r / "munge.socket").exists(), 30, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(lambda: self._sinfo().endswith("idle"), timeout_s, "the node did not become idle")
        return self

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        end = time.time() + timeout_s
        while time.time() < end:
            dead = [n for n, pid in self.pids.items() if not _alive(pid)]
            if dead:
                self.stop()
                raise Unavailable(f"{', '.join(dead)} exited at start-up; see {self.root}/log/")
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        raise Unavailable(f"{what} within {timeout_s:.0f} s; see {self.root}/log/")

    def stop(self) -> None:
        """SIGTERM each daemon by its pid (slurmd, slurmctld, then munged), SIGKILL what is left after 15 s."""
        for name in reversed(DAEMONS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.time() + 15
            while _alive(pid) and time.time() < end:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                _alive(pid)
        self.pids.clear()


def _alive(pid: int) -> bool:
    """Whether our child `pid` still runs (reaps it when it has exited)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid
    return done == 0


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] == ["install"]:
        try:
            install()
        except Unavailable as e:
            sys.exit(f"slurm_cluster: {e}")
        sys.exit(0)

    cluster = Cluster(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="slurm-"))).start()
    print(f"export SLURM_CONF={cluster.conf}   # node {cluster.node}, partition {PARTITION}; Enter stops it")
    try:
        input()
    finally:
        cluster.stop()
