"""Throwaway PostgreSQL servers for interop tests of the PostgreSQL store (issue 15).

The Python twin of tests/support/pg (docs/testing.md, "PostgreSQL"): `initdb` in a fresh temp
dir, 127.0.0.1 on a free port plus a Unix socket inside that dir, SCRAM for the `keyguard`
role (random password, owner of database `keyguard`), fsync and synchronous_commit on. Never the
machine's default cluster. As root the server runs as KEYGUARD_PG_USER (PostgreSQL refuses
root). Every command is bounded by a timeout. A missing PostgreSQL fails with what to do,
never a skip.

    c = PgCluster.start()
    c.psql("CREATE TABLE t (id BIGINT)")     # superuser over the socket, as the server's user
    c.conninfo, c.url                        # the role over TCP with its password
    c.restart_immediate(); c.stop_immediate(); c.start_server()
    c.close()                                # stop (immediate) and remove the directory
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"
ROLE = "keyguard"
DATABASE = "keyguard"
HOST = "127.0.0.1"
TIMEOUT = 30
PSQL_FLAGS = ["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
_PG_VARS = (
    "PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE "
    "PGOPTIONS PGAPPNAME PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGTARGETSESSIONATTRS PGDATA"
).split()


class PgMissing(RuntimeError):
    """PostgreSQL is not installed, or cannot run: the test fails with this message."""


def bin_dir() -> Path:
    """KEYGUARD_PG_BIN, else the newest Debian /usr/lib/postgresql/<major>/bin."""
    env = os.environ.get("KEYGUARD_PG_BIN")
    if env:
        if not (Path(env) / "initdb").is_file():
            raise PgMissing(f"KEYGUARD_PG_BIN={env} has no initdb")
        return Path(env)
    found = []
    root = Path("/usr/lib/postgresql")
    for d in root.iterdir() if root.is_dir() else []:
        if d.name.isdigit() and (d / "bin" / "initdb").is_file():
            found.append((int(d.name), d / "bin"))
    if not found:
        raise PgMissing(
            "PostgreSQL not found: no /usr/lib/postgresql/<version>/bin/initdb and KEYGUARD_PG_BIN "
            "is unset. Run the tests through tests/run (it installs Debian's postgresql package) "
            "or `apt-get install postgresql`."
        )
    return max(found)[1]


def server_user() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root; None otherwise (we run it ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("KEYGUARD_PG_USER", "keyguard-pg")
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise PgMissing(
            f"running as root, and PostgreSQL refuses to run as root, but the OS user {name!r} "
            f"does not exist: run through tests/run (it creates it) or "
            f"`useradd --system --no-create-home {name}`, or set KEYGUARD_PG_USER"
        ) from None
    if user.pw_uid == 0:
        raise PgMissing(f"KEYGUARD_PG_USER={name} is root")
    return user


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _PG_VARS}
    env["PGCONNECT_TIMEOUT"] = "10"
    env.update(extra or {})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def psql_conninfo(conninfo: str, sql: str) -> subprocess.CompletedProcess:
    """`sql` through psql as the calling OS user against any libpq connection string or URL.
    No success check: returncode, stdout and stderr (WARNINGs go there)."""
    return subprocess.run(
        [str(bin_dir() / "psql"), *PSQL_FLAGS, "-d", conninfo, "-c", sql],
        capture_output=True, text=True, timeout=TIMEOUT, env=_clean_env(), stdin=subprocess.DEVNULL,
    )


def psql_popen(conninfo: str, sql: str) -> subprocess.Popen:
    """`psql_conninfo` in the background (a transaction held open, a commit that will wait);
    the caller waits for it and kills it."""
    return subprocess.Popen(
        [str(bin_dir() / "psql"), *PSQL_FLAGS, "-d", conninfo, "-c", sql],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(),
        stdin=subprocess.DEVNULL,
    )


def wait_until(ready, what: str, timeout: float = TIMEOUT) -> None:
    """Polls `ready()` every 20 ms; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s: {what}")
        time.sleep(0.02)


class PgCluster:
    """One server in its own temp dir (data/, sock/, server.log)."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.user = server_user()
        # Not pytest's tmp_path: its parents are closed to the server's OS user.
        self.dir = Path(tempfile.mkdtemp(prefix="keyguard-pg-"))
        self.socket_dir = self.dir / "sock"
        self.socket_dir.mkdir()
        self._chown(self.dir)
        self._chown(self.socket_dir)
        alphabet = string.ascii_letters + string.digits
        self.password = "".join(secrets.choice(alphabet) for _ in range(24))
        self.port = 0
        self.host, self.role, self.dbname = HOST, ROLE, DATABASE

    # ---- life cycle ------------------------------------------------------------------------

    @classmethod
    def start(cls) -> "PgCluster":
        """A fresh server, running, with the role and its database made."""
        c = cls()
        try:
            c._init()
        except BaseException:
            c.close()
            raise
        return c

    def _init(self) -> None:
        self._server(["initdb", "-D", "data", "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-sync"])
        data = self.dir / "data"
        (data / "pg_hba.conf").write_text(
            "# written by tests/interop/pgcluster.py\n"
            f"local all         {SUPERUSER} trust\n"
            f"local replication {SUPERUSER} trust\n"
            "local all         all         scram-sha-256\n"
            f"host  all all {HOST}/32 scram-sha-256\n"
        )
        with open(data / "postgresql.conf", "a") as f:
            f.write("\ninclude 'keyguard.conf'\n")
        for _ in range(5):  # another process may take the port before the server binds it
            self.port = _free_port()
            self._write_conf()
            start = ["pg_ctl", "start", "-D", "data", "-l", "server.log", "-w", "-t", "30"]
            r = self._server(start, check=False)
            if r.returncode == 0:
                break
            if "could not bind" not in self.log():
                raise RuntimeError(f"pg_ctl start failed:\n{r.stderr}\n{self.log()[-4000:]}")
        else:
            raise RuntimeError(f"no free port after 5 tries\n{self.log()[-4000:]}")
        self.wait_ready()
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'", db="postgres")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", db="postgres")

    def _write_conf(self) -> None:
        path = self.dir / "data" / "keyguard.conf"
        path.write_text(
            "# written by tests/interop/pgcluster.py\n"
            f"listen_addresses = '{HOST}'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
            "password_encryption = 'scram-sha-256'\nssl = off\n"
            "max_connections = 50\nshared_buffers = 16MB\n"
        )
        self._chown(path)

    def stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate`: a crash; the next start runs recovery."""
        self._server(["pg_ctl", "stop", "-D", "data", "-m", "immediate", "-w", "-t", "30"])

    def start_server(self) -> None:
        """Starts the stopped server again, same data dir and port."""
        self._server(["pg_ctl", "start", "-D", "data", "-l", "server.log", "-w", "-t", "30"])
        self.wait_ready()

    def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`."""
        self._server(["pg_ctl", "restart", "-D", "data", "-m", "immediate", "-l", "server.log",
                      "-w", "-t", "30"])
        self.wait_ready()

    def wait_ready(self, timeout: float = TIMEOUT) -> None:
        """Polls pg_isready until the server accepts connections."""
        wait_until(
            lambda: self._server(["pg_isready", "-h", str(self.socket_dir), "-p", str(self.port),
                                  "-t", "5"], check=False).returncode == 0,
            f"pg_isready never succeeded\n{self.log()[-4000:]}", timeout)

    def pid(self) -> int | None:
        """The postmaster's pid, None when it is not running."""
        try:
            pid = int((self.dir / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def close(self) -> None:
        """Stops the server (immediate) and removes its directory."""
        if self.pid() is not None:
            self._server(["pg_ctl", "stop", "-D", "data", "-m", "immediate", "-w", "-t", "10"],
                         check=False, timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- connection details ------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        """libpq key/value string: the role over TCP with its password."""
        return (f"host={HOST} port={self.port} user={ROLE} password={self.password} "
                f"dbname={DATABASE}")

    @property
    def socket_conninfo(self) -> str:
        """The same over the Unix socket (still SCRAM)."""
        return (f"host={self.socket_dir} port={self.port} user={ROLE} password={self.password} "
                f"dbname={DATABASE}")

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}:{self.password}@{HOST}:{self.port}/{DATABASE}"

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    # ---- SQL ---------------------------------------------------------------------------

    def psql(self, sql: str, db: str = DATABASE) -> str:
        """`sql` as the superuser over the socket; must succeed; unaligned tuples, no final
        newline."""
        r = self.psql_output(sql, db)
        if r.returncode != 0:
            raise AssertionError(f"psql {sql!r} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout.rstrip("\n")

    def psql_output(self, sql: str, db: str = DATABASE) -> subprocess.CompletedProcess:
        """The same without the success check."""
        return self._server(["psql", *PSQL_FLAGS, "-h", str(self.socket_dir), "-p", str(self.port),
                             "-U", SUPERUSER, "-d", db, "-c", sql], check=False)

    # ---- internals ---------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _server(self, argv: list[str], check: bool = True, timeout: float = TIMEOUT):
        """A PostgreSQL program as the server's OS user, in the cluster's directory."""
        kwargs = {}
        if self.user is not None:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        r = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]], cwd=self.dir, capture_output=True, text=True,
            timeout=timeout, env=_clean_env({"HOME": str(self.dir)}), stdin=subprocess.DEVNULL,
            **kwargs,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
        return r

