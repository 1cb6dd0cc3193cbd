"""Two nodes on one machine, for trials that span nodes.

Node 0 is this machine's own network namespace; node 1 is a network namespace the test creates,
joined to it by a veth pair (10.77.91.1 and 10.77.91.2, addresses that exist only inside these
namespaces). Node 1 runs OpenSSH's sshd (Debian's ``openssh-server``) with a key made for the
test, in a mount namespace of its own where a given folder (the test's project: the model file,
``trials/``) is hidden under an empty tmpfs: node 1 shares nothing with the search but the
installed Python environment, as a cluster node with the same image would.

Both ends of the veth pair are named ``IFNAME``, so ``GLOO_SOCKET_IFNAME`` is the same on both
nodes. Needs root (``ip netns``), iproute2 and sshd: `missing` says what is missing.

`Slurm` makes the same two nodes a Slurm cluster (Debian's ``slurm-wlm``): a slurmctld, and a
slurmd on each node (node 1's in its namespaces, like its sshd), so ``srun`` starts steps there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from autotune.runner._nodes import free_port_on

NODE0 = "10.77.91.1"
NODE1 = "10.77.91.2"
IFNAME = "atnode0"
SSHD = "/usr/sbin/sshd"


def missing() -> str | None:
    """What this machine lacks for two namespaced nodes, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SSHD, os.X_OK):
        return "sshd is not installed (Debian's openssh-server)"
    return None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


class TwoNodes:
    """The two nodes, set up on construction; `close` removes every trace.

    Attributes:
        hidden: The folder node 1 cannot see.
        hostfile: A DeepSpeed hostfile for both nodes, one slot each (in its own folder).
        ssh_options: What ``AUTOTUNE_SSH_OPTIONS`` must hold to reach node 1.
        namespace: Node 1's network namespace.
    """

    def __init__(self, hidden: Path, slots: int = 1) -> None:
        self.hidden = Path(hidden)
        self.namespace = f"autotune-node1-{os.getpid()}"
        self.folder = Path(tempfile.mkdtemp(prefix="autotune-nodes-"))
        self.hostfile = self.folder / "hostfile"
        self.hostfile.write_text(f"{NODE0} slots={slots}\n{NODE1} slots={slots}\n")
        self.sshd: subprocess.Popen[bytes] | None = None
        self.daemons: list[subprocess.Popen[bytes]] = []
        try:
            self._network()
            self._sshd()
        except BaseException:
            self.close()
            raise
        key = self.folder / "client_key"
        self.ssh_options = (
            f"-i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o ConnectTimeout=10"
        )

    def _network(self) -> None:
        subprocess.run(["ip", "link", "del", IFNAME], capture_output=True)  # a crashed run's
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "atnode1")
        _run("ip", "link", "set", "atnode1", "netns", self.namespace)
        inside = ("ip", "netns", "exec", self.namespace)
        _run(*inside, "ip", "link", "set", "atnode1", "name", IFNAME)
        _run("ip", "addr", "add", f"{NODE0}/24", "dev", IFNAME)
        _run("ip", "link", "set", IFNAME, "up")
        _run(*inside, "ip", "addr", "add", f"{NODE1}/24", "dev", IFNAME)
        _run(*inside, "ip", "link", "set", IFNAME, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")

    def _sshd(self) -> None:
        for name in ("host_key", "client_key"):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.folder / name))
        shutil.copy(self.folder / "client_key.pub", self.folder / "authorized_keys")
        config = self.folder / "sshd_config"
        config.write_text(
            f"ListenAddress {NODE1}\nPort 22\nHostKey {self.folder / 'host_key'}\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {self.folder / 'sshd.pid'}\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation
        self.sshd = self.start_on_node1([SSHD, "-D", "-e", "-f", str(config)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd in {self.namespace} exited with {self.sshd.returncode}")
            try:
                socket.create_connection((NODE1, 22), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd in {self.namespace} did not listen on {NODE1}:22")

    def start_on_node1(
        self, command: list[str], log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a daemon on node 1: in its network namespace (nsenter keeps this machine's
        /sys, where slurmd finds its cgroups), in a mount namespace of its own where the hidden
        folder is an empty tmpfs."""
        hide = f"mount -t tmpfs tmpfs '{self.hidden}' && exec {shlex.join(command)}"
        with open(os.devnull if log is None else log, "wb") as out:
            daemon = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.namespace}", "unshare", "--mount"]
                + ["--propagation", "private", "sh", "-c", hide],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        self.daemons.append(daemon)  # nsenter, unshare and sh all exec: its pid is the daemon's
        return daemon

    def node1_processes(self) -> list[str]:
        """Node 1's processes other than its daemons (sshd's listener, slurmd), as "PID
        COMMAND LINE"."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        ).stdout.split()
        daemons = {daemon.pid for daemon in self.daemons}
        lines = []
        for pid in listed:
            if int(pid) in daemons:
                continue
            try:
                text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            lines.append(f"{pid} {text.strip()}")
        return lines

    def close(self) -> None:
        if self.daemons:
            for pid in subprocess.run(
                ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
            ).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            for daemon in self.daemons:
                with_timeout(daemon)
        subprocess.run(["ip", "link", "del", IFNAME], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


SLURM_TOOLS = (
    *("slurmctld", "slurmd", "srun", "salloc", "sbatch", "scancel", "scontrol", "sinfo"),
    "nsenter",
)


def missing_slurm() -> str | None:
    """What this machine lacks for a Slurm cluster of the two nodes, or None."""
    for tool in SLURM_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's slurm-wlm)"
    return None


class Slurm:
    """The two nodes as a Slurm cluster: slurmctld and node 0's slurmd in this machine's
    namespaces, node 1's slurmd in node 1's. Slurm's node names are the nodes' addresses (so a
    hostfile written from ``scontrol show hostnames`` names hosts that resolve). No munge: the
    cluster is reachable only inside the test's namespaces, so ``auth/none`` does.

    Attributes:
        env: What a Slurm command needs in its environment (``SLURM_CONF``).
    """

    def __init__(self, nodes: TwoNodes) -> None:
        self.folder = nodes.folder / "slurm"
        (self.folder / "state").mkdir(parents=True)
        conf = self.folder / "slurm.conf"
        cpus = os.cpu_count() or 1
        conf.write_text(
            textwrap.dedent(
                f"""\
                ClusterName=autotune
                SlurmctldHost=ctl({NODE0})
                SlurmctldPort={free_port_on(NODE0)}
                SlurmdPort={free_port_on(NODE0)}
                AuthType=auth/none
                CredType=cred/none
                SlurmUser=root
                SlurmdUser=root
                StateSaveLocation={self.folder}/state
                SlurmdSpoolDir={self.folder}/spool.%n
                SlurmctldPidFile={self.folder}/slurmctld.pid
                SlurmdPidFile={self.folder}/slurmd.%n.pid
                SlurmctldLogFile={self.folder}/slurmctld.log
                SlurmdLogFile={self.folder}/slurmd.%n.log
                ProctrackType=proctrack/pgid
                TaskPlugin=task/none
                JobAcctGatherType=jobacct_gather/none
                SelectType=select/cons_tres
                SelectTypeParameters=CR_CPU
                MpiDefault=none
                SwitchType=switch/none
                ReturnToService=2
                KillWait=2
                NodeName={NODE0} NodeAddr={NODE0} CPUs={cpus} State=UNKNOWN
                NodeName={NODE1} NodeAddr={NODE1} CPUs={cpus} State=UNKNOWN
                PartitionName=nodes Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
                """
            )
        )
        self.env = {"SLURM_CONF": str(conf)}
        environment = {**os.environ, **self.env}
        self.daemons: list[subprocess.Popen[bytes]] = []
        try:
            # slurmctld takes itself for the controller by its host name: its own UTS namespace.
            self._start(["unshare", "--uts", "sh", "-c", "hostname ctl && exec slurmctld -D -i"])
            self._start(["slurmd", "-D", "-N", NODE0])
            nodes.start_on_node1(["slurmd", "-D", "-N", NODE1], self.folder / "node1.out", self.env)
            deadline = time.monotonic() + 60
            while True:
                states = subprocess.run(
                    ["sinfo", "-h", "-N", "-o", "%T"],
                    env=environment,
                    capture_output=True,
                    text=True,
                ).stdout.split()
                if states == ["idle", "idle"]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Slurm's nodes are {states}, not idle: {self.logs()}")
                time.sleep(0.5)
        except BaseException:
            self.close()
            raise

    def _start(self, command: list[str]) -> None:
        with (self.folder / f"{len(self.daemons)}.out").open("wb") as out:
            self.daemons.append(
                subprocess.Popen(
                    command,
                    env={**os.environ, **self.env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def allocate(self) -> str:
        """A job allocation of both nodes, without a shell: its job id (``srun`` joins it when
        ``SLURM_JOB_ID`` holds the id)."""
        done = subprocess.run(
            ["salloc", "--no-shell", "--nodes=2", "--job-name=autotune-test"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Granted job allocation (\d+)", done.stderr)
        if found is None:
            raise RuntimeError(f"salloc: {done.stderr.strip()}; {self.logs()}")
        return found[1]

    def cancel(self, job: str) -> None:
        subprocess.run(["scancel", job], env={**os.environ, **self.env}, capture_output=True)

    def logs(self) -> str:
        """The daemons' last lines, for a failure message."""
        tails = []
        for path in sorted(self.folder.glob("*.log")):
            tails.append(f"{path.name}: " + " | ".join(path.read_text().splitlines()[-5:]))
        return "; ".join(tails)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.terminate()
        for daemon in self.daemons:
            with_timeout(daemon)


def with_timeout(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
