"""Real redis-server processes for tests that kill, restart, lock or encrypt them.

Debian's /usr/bin/redis-server (TLS-capable, installed by .ci/run) is preferred; any
redis-server on PATH serves tests that need no TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

DEBIAN_REDIS = Path("/usr/bin/redis-server")


def redis_server_binary(tls: bool = False) -> str:
    if DEBIAN_REDIS.exists():
        return str(DEBIAN_REDIS)
    found = shutil.which("redis-server")
    if found is None or tls:
        raise RuntimeError("these tests need Debian's redis-server (apt-get install redis-server)")
    return found


def free_port(low: int | None = None, high: int | None = None) -> int:
    """A port nothing listens on: any (the system's pick), or one in ``low``..``high``."""
    candidates = random.sample(range(low, high + 1), high + 1 - low) if low is not None else [0]
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError(f"no free port in {low}..{high}")


# The sentinel tests' servers: ports apart from those other processes on a shared machine use.
SENTINEL_TEST_PORTS = (27000, 27999)


class RedisProcess:
    """One redis-server on 127.0.0.1, its data in ``directory``; ``kill()`` it like a crash and
    ``start()`` it again on the same port. ``args`` are extra config directives."""

    def __init__(self, directory: Path, args: list[str] = (), tls: bool = False, port: int | None = None,
                 sentinel: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.tls = tls
        self.sentinel = sentinel
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        port_args = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        first = [redis_server_binary(self.tls)]
        if self.sentinel:  # a sentinel rewrites its config file: one of its own, in its directory
            config = self.directory / "sentinel.conf"
            if not config.exists():
                config.write_text("")
            first += [str(config), "--sentinel"]
        command = [*first, *port_args, "--bind", "127.0.0.1", "--dir", str(self.directory), "--protected-mode", "no",
                   *([] if self.sentinel else ["--save", ""]), *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {' '.join(command)}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def client(self, **options) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate it signed;
    returns the PEM paths: ca, server_cert, server_key, client_cert, client_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("segstream test CA")).issuer_name(name("segstream test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(f"segstream test {role}")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if role == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{role}_cert"] = directory / f"{role}.pem"
        paths[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{role}_key"] = write_key(key, directory / f"{role}.key")
    return paths


class SentinelGroup:
    """A master, a replica of it (``--replicaof``) and ``sentinels`` sentinels watching them as
    ``name``, quick to fail over (down after 500 ms); ports in ``SENTINEL_TEST_PORTS``.
    ``master_password`` is the master's and the replica's requirepass, ``sentinel_password`` the
    sentinels' own; with ``certs`` (``make_certificates``) every one of them speaks TLS alone."""

    def __init__(self, directory: Path, name: str = "segmaster", sentinels: int = 1,
                 master_password: str | None = None, sentinel_password: str | None = None,
                 certs: dict[str, Path] | None = None):
        directory = Path(directory)
        self.name = name
        self.sentinel_password = sentinel_password
        tls = {"tls-cert-file": certs["server_cert"], "tls-key-file": certs["server_key"],
               "tls-ca-cert-file": certs["ca"], "tls-replication": "yes", "tls-auth-clients": "no"} if certs else {}
        self.client_options = {"ssl": True, "ssl_ca_certs": str(certs["ca"])} if certs else {}
        master_args = [*(["--requirepass", master_password] if master_password else []),
                       *(part for key, value in tls.items() for part in (f"--{key}", str(value)))]
        port = lambda: free_port(*SENTINEL_TEST_PORTS)  # noqa: E731
        # no 5 s wait before the replica's first sync (repl-diskless-sync-delay)
        replication = ["--repl-diskless-sync-delay", "0", *(["--masterauth", master_password] if master_password else [])]
        self.sentinels: list[RedisProcess] = []
        self.master = self.replica = None
        try:
            self.master = RedisProcess(directory / "master", [*master_args, *replication], port=port(), tls=bool(tls))
            self.replica = RedisProcess(directory / "replica", [*master_args, *replication, "--replicaof", "127.0.0.1",
                                                                str(self.master.port)], port=port(), tls=bool(tls))
            settings = [f"sentinel monitor {name} 127.0.0.1 {self.master.port} 1",
                        f"sentinel down-after-milliseconds {name} 500", f"sentinel failover-timeout {name} 2000",
                        *([f"sentinel auth-pass {name} {master_password}"] if master_password else []),
                        *([f"requirepass {sentinel_password}"] if sentinel_password else []),
                        *(f"{key} {value}" for key, value in tls.items())]
            for i in range(sentinels):
                (directory / f"sentinel{i}").mkdir(parents=True)
                (directory / f"sentinel{i}" / "sentinel.conf").write_text("\n".join(settings) + "\n")
                self.sentinels.append(RedisProcess(directory / f"sentinel{i}", port=port(), sentinel=True,
                                                   tls=bool(tls)))
            self.wait_for(lambda: self.replica.port in self.replica_ports() and self.replica.client(
                password=master_password, **self.client_options).info("replication")["master_link_status"] == "up")
        except BaseException:  # what started before a failure must not outlive the test
            self.close()
            raise

    @property
    def sentinel_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def url(self, name: str | None = None, login: str = "") -> str:
        return f"{'rediss' if self.client_options else 'redis'}+sentinel://{login}{self.sentinel_hosts}/{name or self.name}"

    def ask(self, *command):
        """A command to the first sentinel."""
        return self.sentinels[0].client(password=self.sentinel_password, **self.client_options).execute_command(*command)

    def master_port(self) -> int:
        return int(self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)[1])

    def replica_ports(self) -> list[int]:
        """The replicas the sentinel sees up."""
        replicas = self.ask("SENTINEL", "REPLICAS", self.name)
        ports = []
        for replica in replicas:
            fields = dict(zip(replica[::2], replica[1::2])) if isinstance(replica, list) else replica
            flags = fields[b"flags"].decode()
            if "down" not in flags and "disconnected" not in flags:
                ports.append(int(fields[b"port"]))
        return ports

    @staticmethod
    def wait_for(condition, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel group did not get there in time")
            time.sleep(0.05)

    def close(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            if process is not None:
                process.close()

    def __enter__(self) -> SentinelGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
