"""Two nodes on one machine, for trials that span nodes.

Node 0 is this machine's own network namespace; node 1 is a network namespace the test creates,
joined to it by a veth pair (10.77.91.1 and 10.77.91.2, addresses that exist only inside these
namespaces). Node 1 runs OpenSSH's sshd (Debian's ``openssh-server``) with a key made for the
test, in a mount namespace of its own where a given folder (the test's project: the model file,
``trials/``) is hidden under an empty tmpfs: node 1 shares nothing with the search but the
installed Python environment, as a cluster node with the same image would.

Both ends of the veth pair are named ``IFNAME``, so ``GLOO_SOCKET_IFNAME`` is the same on both
nodes. Needs root (``ip netns``), iproute2 and sshd: `available` says what is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

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
        hide = f"mount -t tmpfs tmpfs '{self.hidden}' && exec {SSHD} -D -e -f '{config}'"
        self.sshd = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, "unshare", "--mount"]
            + ["--propagation", "private", "sh", "-c", hide],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
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

    def node1_processes(self) -> list[str]:
        """Node 1's processes other than sshd's listener, as "PID COMMAND LINE"."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        ).stdout.split()
        # ip netns exec, unshare and sh all exec: the listener has the started process's pid.
        listener = self.sshd.pid if self.sshd is not None else None
        lines = []
        for pid in listed:
            if int(pid) == listener:
                continue
            try:
                text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            lines.append(f"{pid} {text.strip()}")
        return lines

    def close(self) -> None:
        if self.sshd is not None:
            for pid in subprocess.run(
                ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
            ).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            with_timeout(self.sshd)
        subprocess.run(["ip", "link", "del", IFNAME], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def with_timeout(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
