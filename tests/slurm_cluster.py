"""A real single-node Slurm cluster in a temp dir, for tests and the benchmark.

    with SlurmCluster(Path(tmp)) as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)

`python tests/slurm_cluster.py install` apt-installs Slurm where `sinfo` is absent (CI).

Each cluster is private: its own munged (own key, own socket), its own free ports,
state and spool folders, and a `slurm.conf` that the clients find through $SLURM_CONF.
Nothing in /etc or /run is read or changed, so a second cluster on the same machine
(another test session, the benchmark) cannot break a first one, and stopping one stops
only the processes it started.

This module does not import gsup: the benchmark imports it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

# Debian's packages: the daemons, the clients (sbatch, squeue, sacct...) and munge.
PACKAGES = ("slurm-wlm", "slurm-client", "munge")
PROGRAMS = ("sinfo", "sbatch", "squeue", "sacct", "scancel", "slurmctld", "slurmd", "munged")
NODE = "localhost"
READY_TIMEOUT = 30.0
# CPUs the node declares, whatever it has: test jobs mostly wait, and 2 real CPUs would
# run 2 at a time (~2 jobs/s; 32: ~29 jobs/s).
NODE_CPUS = 32
STOP_TIMEOUT = 10.0


def program(name: str) -> str | None:
    """A program's path; the daemons live in /usr/sbin, which a user's $PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    return [name for name in PROGRAMS if program(name) is None]


def installed() -> bool:
    return not missing_programs()


def install() -> None:
    """apt-get install Slurm unless it is there already (idempotent; needs root)."""
    if installed():
        print("slurm_cluster: Slurm is installed")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if missing := missing_programs():
        raise SystemExit(f"slurm_cluster: still missing after apt-get install: {missing}")
    print("slurm_cluster: installed", " ".join(PACKAGES))


def free_port() -> int:
    # Ports other clusters on this machine do not hold; the default 6817/6818 may be taken.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_memory() -> str:
    """The RealMemory= that `slurmd -C` detects, for the NodeName line (its CPUs are
    NODE_CPUS, allowed by SlurmdParameters=config_overrides)."""
    out = subprocess.run(
        [str(program("slurmd")), "-C"], capture_output=True, text=True, check=True
    ).stdout
    return next(f for f in out.split() if f.startswith("RealMemory="))


class SlurmCluster:
    """slurmctld + slurmd + munged under `root`; `env` points the clients at it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self.jobcomp = self.root / "jobcomp.txt"
        # munged demands a socket folder every user can traverse, and a unix socket path
        # is ~100 bytes at most: pytest's tmp dirs are neither, so the socket lives apart.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="slurm-munge-", dir="/tmp"))
        self.munge_socket = self.munge_dir / "munge.sock"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (sbatch, squeue, sacct...) needs to reach this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = READY_TIMEOUT) -> SlurmCluster:
        if missing := missing_programs():
            raise RuntimeError(f"Slurm is not installed (missing {', '.join(missing)})")
        try:
            self._write_files()
            self._spawn("munged", *self._munged_args())
            self._wait(self.munge_socket.exists, timeout, "munged's socket")
            # -i: ignore any saved state; -D: stay in the foreground, so the pid is ours.
            self._spawn("slurmctld", "-D", "-i")
            self._spawn("slurmd", "-D", "-N", NODE)
            self._wait(self.node_idle, timeout, f"node {NODE} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def node_idle(self) -> bool:
        result = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False)
        return result.stdout.strip() == "idle"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client against this cluster."""
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons this cluster started, by pid."""
        if "slurmctld" in self.processes and "slurmd" in self.processes:
            self._cancel_all_jobs()
        # slurmd before slurmctld before munged: each needs the next to shut down cleanly.
        for name in ("slurmd", "slurmctld", "munged"):
            if process := self.processes.pop(name, None):
                _terminate(process)
        self._kill_step_daemons()
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    def _kill_step_daemons(self) -> None:
        """A slurmstepd of a job cancelled as the cluster stops can outlive slurmd (seen
        after thousands of jobs): those of this cluster (their SLURM_CONF) are killed."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if not cmdline.read().startswith(b"slurmstepd"):
                        continue
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if mine in environ.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                continue  # gone meanwhile, or not a process

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The end of every daemon log, to explain a start that failed."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def _write_files(self) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o755)
        # A key of our own (munged wants >= 32 bytes, 0600, owned by its user): the system's
        # /etc/munge/munge.key is left to whatever else runs munged on this machine.
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self.conf.write_text(self._slurm_conf())

    def _munged_args(self) -> list[str]:
        folder = self.munge_dir
        return [
            "-F",  # foreground: the pid we hold is munged's
            f"--socket={self.munge_socket}",
            f"--key-file={folder / 'munge.key'}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--seed-file={folder / 'munged.seed'}",
            f"--log-file={self.logs / 'munged.log'}",
        ]

    def _slurm_conf(self) -> str:
        root = self.root
        return "\n".join(
            [
                "ClusterName=gsuptest",
                "SlurmctldHost=localhost(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                # Root runs everything: no slurm user to create, no chown of the folders.
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # Daemons and clients alike talk to this cluster's own munged.
                f"AuthInfo=socket={self.munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
                f"SlurmdLogFile={self.logs / 'slurmd.log'}",
                # No cgroups needed (containers, no systemd).
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                # No slurmdbd: finished jobs go to a text file that `sacct -c` reads.
                "JobCompType=jobcomp/filetxt",
                f"JobCompLoc={self.jobcomp}",
                # Without these, a submitted job waits for the next scheduler pass (~3 s).
                "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
                "ReturnToService=2",
                "SlurmdParameters=config_overrides",  # a node larger than its hardware
                f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} {node_memory()}"
                " State=UNKNOWN",
                f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.logs / f"{name}.out", "ab") as out:
            self.processes[name] = subprocess.Popen(
                [str(program(name)), *args],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a ^C meant for pytest does not reach the daemons first.
                start_new_session=True,
            )

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if dead := [n for n, p in self.processes.items() if p.poll() is not None]:
                raise RuntimeError(
                    f"{', '.join(dead)} exited while waiting for {what}:\n" + self.log_tail()
                )
            if condition():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n" + self.log_tail())

    def _cancel_all_jobs(self) -> None:
        # A job still running when slurmd stops would leave its slurmstepd behind.
        if self.processes["slurmctld"].poll() is not None:
            return
        self.run("scancel", "--user=root", check=False)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                return
            time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def main(argv: list[str]) -> int:
    if argv == ["install"]:
        install()
        return 0
    print("usage: python tests/slurm_cluster.py install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
