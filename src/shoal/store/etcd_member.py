"""Run and supervise the local ``etcd`` member of one shoald.

The member is a child process we started; it is only ever signalled by its own PID. If it dies
while supervised it is restarted (with the same data directory) within about a second, unless it
was removed from the cluster.

Growing a cluster: :meth:`EtcdMember.join` adds the member through a running member
(``member_add``) and starts it with ``--initial-cluster-state=existing``. TLS certificates with the
right IP SANs come from :func:`shoal.store.etcd_tls.issue_etcd_cert`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shoal.store.base import StoreError
from shoal.store.etcd import EtcdStore, initial_cluster

__all__ = ["EtcdMember", "EtcdTLS"]

log = logging.getLogger(__name__)

ETCD_BINARY = "/usr/bin/etcd"


# etcd 3.4 logs this (and exits) when it finds itself removed from the cluster.
_REMOVED_MARKERS = (
    b"the member has been permanently removed from the cluster",
    b"data-dir used by this member must be removed",
)


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """PEM file paths for one listener (client or peer); peers/clients must present a cert signed by
    ``ca``. The certificate needs both server and client auth usages (etcd dials its peers and its
    own client port with it) and IP SANs for the listen addresses."""

    cert: str | Path
    key: str | Path
    ca: str | Path


class EtcdMember:
    """A supervised local etcd member.

    ``client_url``/``peer_url`` are ``http(s)://host:port`` (listened on and advertised);
    ``initial_cluster`` is etcd's ``name=peer_url,...`` string and ``initial_cluster_state`` is
    ``"new"`` or ``"existing"``. ``client_tls``/``peer_tls`` switch on TLS with certificate auth.
    ``force_new_cluster`` (recovery after losing quorum for good) makes the first launch rewrite the
    membership to this member alone, keeping the data; automatic restarts never pass it again.
    ``peer_allowed_cn`` makes etcd accept only peers whose certificate has that common name.
    ``extra_args`` are appended to the etcd command line.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | Path,
        client_url: str,
        peer_url: str,
        initial_cluster: str,
        initial_cluster_state: str = "new",
        *,
        initial_cluster_token: str = "shoal",
        client_tls: EtcdTLS | None = None,
        peer_tls: EtcdTLS | None = None,
        binary: str = ETCD_BINARY,
        extra_args: Sequence[str] = (),
        restart_delay: float = 0.2,
        force_new_cluster: bool = False,
        peer_allowed_cn: str = "",
    ) -> None:
        if initial_cluster_state not in ("new", "existing"):
            raise ValueError(f"initial_cluster_state must be 'new' or 'existing': {initial_cluster_state!r}")
        self.name = name
        self.data_dir = Path(data_dir)
        self.client_url = client_url
        self.peer_url = peer_url
        self.initial_cluster = initial_cluster
        self.initial_cluster_state = initial_cluster_state
        self.initial_cluster_token = initial_cluster_token
        self.client_tls = client_tls
        self.peer_tls = peer_tls
        self.binary = binary
        self.extra_args = list(extra_args)
        self.restart_delay = restart_delay
        self.force_new_cluster = force_new_cluster
        self.peer_allowed_cn = peer_allowed_cn
        self._force_pending = force_new_cluster  # consumed by the first launch
        self.restarts = 0
        self.removed = False  # set when etcd exited because it was removed from the cluster
        self._log_offset = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- public ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running etcd process, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def client_endpoint(self) -> str:
        """``host:port`` of the client URL, as :class:`EtcdStore` takes it."""
        return urlsplit(self.client_url).netloc

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @classmethod
    async def join(
        cls,
        via: EtcdStore,
        name: str,
        data_dir: str | Path,
        client_url: str,
        peer_url: str,
        *,
        ready_within: float = 60.0,
        **kwargs: object,
    ) -> EtcdMember:
        """Add a member to the cluster ``via`` talks to and start it (``existing`` state). If it does
        not come up, it is removed again, so the cluster does not keep a voter that never runs."""
        new, members = await via.member_add([peer_url])
        cluster = initial_cluster(members, new, name)
        member = cls(name, data_dir, client_url, peer_url, cluster, "existing", **kwargs)  # type: ignore[arg-type]
        try:
            await member.start(ready_within)
        except BaseException:
            with contextlib.suppress(StoreError):
                await via.member_remove(new.id)
            raise
        return member

    def store(self, **kwargs: object) -> EtcdStore:
        """An :class:`EtcdStore` talking to this member (with the client TLS files, if any)."""
        tls = self.client_tls
        if tls is not None:
            kwargs = {"ca_cert": tls.ca, "cert": tls.cert, "key": tls.key, **kwargs}
        return EtcdStore(self.client_url, **kwargs)  # type: ignore[arg-type]

    def command(self, *, force_new_cluster: bool = False) -> list[str]:
        """The etcd command line."""
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            f"--initial-cluster-token={self.initial_cluster_token}",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--quota-backend-bytes=2147483648",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--snapshot-count=10000",
            "--pre-vote",  # a member coming back from a partition does not depose the raft leader
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.client_tls is not None:
            tls = self.client_tls
            args += [f"--cert-file={tls.cert}", f"--key-file={tls.key}", f"--trusted-ca-file={tls.ca}"]
            args.append("--client-cert-auth")
        if self.peer_tls is not None:
            tls = self.peer_tls
            args += [
                f"--peer-cert-file={tls.cert}",
                f"--peer-key-file={tls.key}",
                f"--peer-trusted-ca-file={tls.ca}",
                "--peer-client-cert-auth",
            ]
            if self.peer_allowed_cn:
                args.append(f"--peer-cert-allowed-cn={self.peer_allowed_cn}")
        if force_new_cluster:
            args.append("--force-new-cluster")
        return args + self.extra_args

    async def start(self, ready_within: float = 30.0) -> None:
        """Launch etcd, wait until it serves a linearizable read, then supervise it.

        With a multi-member ``new`` cluster this returns once a quorum of members is up, so start
        the members concurrently.
        """
        if self._supervisor is not None:
            raise RuntimeError(f"etcd member {self.name} already started")
        self._stopping = False
        await self._launch()
        try:
            await self.wait_ready(ready_within)
        except BaseException:
            await self._terminate()
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"etcd-{self.name}")

    async def wait_ready(self, within: float = 30.0) -> None:
        """Wait until the member answers a client ``get``; StoreError if it exits or times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: Exception | None = None
        while loop.time() < deadline:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                raise StoreError(f"etcd member {self.name} exited: {self._log_tail()}")
            client = self.store(timeout=1.0)
            try:
                await client.get("/shoal/health")
                return
            except StoreError as e:
                last = e
            finally:
                await client.close()
            await asyncio.sleep(0.1)
        raise StoreError(f"etcd member {self.name} not ready after {within:.0f}s: {last}")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop supervising and terminate etcd: SIGTERM, then SIGKILL after ``grace`` seconds."""
        self._stopping = True
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._terminate(grace)

    # ---- internals ---------------------------------------------------------------------------

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "etcd.pid"

    async def _reap_stale(self) -> None:
        """An etcd we started before shoald was killed may still hold the data dir and ports: stop it
        (by the PID we recorded, and only if it still is our etcd on this data dir)."""
        try:
            pid = int(self.pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"--data-dir={self.data_dir}".encode() not in cmdline:
            return
        log.info("stopping etcd pid %d left from an earlier run", pid)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            for _ in range(int(wait / 0.05)):
                if not Path(f"/proc/{pid}").exists() or b"(etcd) Z" in _stat(pid):
                    return
                await asyncio.sleep(0.05)

    async def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd insists on it
        await self._reap_stale()
        force, self._force_pending = self._force_pending, False
        if force:
            log.warning("etcd member %s: forcing a new one-member cluster from its data", self.name)
        with open(self.log_path, "ab") as logf:  # noqa: ASYNC230 - opening a log file is instant
            self._log_offset = logf.tell()
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(force_new_cluster=force),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,  # keep terminal signals (Ctrl-C) away from etcd
            )
        self.pid_path.write_text(str(self._proc.pid))
        log.info("etcd member %s started, pid %d", self.name, self._proc.pid)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        quick_failures = 0
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            started = loop.time()
            code = await proc.wait()
            if self._stopping:
                return
            if self._was_removed():
                self.removed = True
                log.error("etcd member %s was removed from the cluster; not restarting it", self.name)
                return
            # Restart quickly, but back off if it keeps dying right after starting.
            quick_failures = quick_failures + 1 if loop.time() - started < 5.0 else 1
            delay = min(5.0, self.restart_delay * 2 ** (quick_failures - 1))
            msg = "etcd member %s (pid %d) exited with %s; restarting in %.1fs"
            log.warning(msg, self.name, proc.pid, code, delay)
            await asyncio.sleep(delay)
            while not self._stopping:
                try:
                    await self._launch()
                    self.restarts += 1
                    break
                except OSError:
                    log.exception("cannot restart etcd member %s", self.name)
                    await asyncio.sleep(1.0)

    async def _terminate(self, grace: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("etcd member %s (pid %d) ignored SIGTERM; killing it", self.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _was_removed(self) -> bool:
        """Whether the last run's log says the member was removed from the cluster."""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(min(self._log_offset, end), end - 65536))  # the log may have been rotated since
                text = f.read()
        except OSError:
            return False
        return any(marker in text for marker in _REMOVED_MARKERS)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                tail = f.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(tail)


def _stat(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b""
