"""Secret and config files for this node's task containers, kept in memory only.

The dispatcher sends the node the secrets and configs of its assigned tasks with the assignments; the
session keeps them in memory (``session.deps``). When a task is prepared, each reference becomes a file
in a tmpfs that shoald mounts at ``<data-dir>/task-files`` (mode 0700, so only root reaches it) — never
on the node's disk — at ``<task id>/<kind>-<object id>`` with the reference's uid, gid and mode,
and the container gets it bind-mounted read-only at its target (``/run/secrets/<name>`` or ``/<name>``
by default). Inside the container the file shows up on a tmpfs. A task's files are removed with its
container; the tmpfs is unmounted when the node leaves the swarm or shoald stops.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from shoal.model.secrets import SINGULAR, file_owner, references, target_path
from shoal.model.task import task_name
from shoal.model.template import PAYLOAD_T, TemplateError, context, expand

log = logging.getLogger(__name__)

KINDS = ("secrets", "configs")


class FilesError(Exception):
    """A task's secret or config could not be put in place."""


def tmpfs_mounted(path: Path) -> bool:
    """Whether ``path`` is the mount point of a tmpfs (in this mount namespace)."""
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            point = fields[4].encode().decode("unicode_escape") if len(fields) > 4 else ""
            if point == target and right.split()[:1] == ["tmpfs"]:
                return True
    return False


def unmount(root: Path) -> None:
    """Detach the tmpfs (lazily: running containers keep their own files) and drop the directory."""
    while tmpfs_mounted(root):
        if subprocess.run(["umount", "-l", str(root)], capture_output=True).returncode != 0:
            break
    with contextlib.suppress(OSError):
        root.rmdir()


class TaskFiles:
    """Writes, mounts and removes the secret and config files of tasks."""

    def __init__(self, root: Path, session: Any) -> None:
        self.root = root
        self.session = session  # has ``deps``: {"secrets": {id: payload}, "configs": {id: payload}}

    def _mount(self) -> None:
        if tmpfs_mounted(self.root):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,nosuid,nodev,noexec", "tmpfs", str(self.root)],
                            capture_output=True, text=True)
        if cp.returncode != 0:
            raise FilesError(f"shoal: cannot mount a tmpfs for secrets at {self.root}: {cp.stderr.strip()}")

    def prepare(self, task: dict) -> list[dict]:
        """Write the task's files (again, if they exist) and return the container's bind mounts."""
        refs = [(kind, ref) for kind in KINDS for ref in references(task.get("Spec") or {}, kind)]  # type: ignore[arg-type]
        if not refs:
            return []
        deps = getattr(self.session, "deps", None) or {}
        self._mount()
        tdir = self.root / task["ID"]
        tdir.mkdir(mode=0o700, exist_ok=True)
        mounts = []
        for kind, ref in refs:
            one = SINGULAR[kind]
            oid = ref.get(f"{one.title()}ID") or ""
            item = (deps.get(kind) or {}).get(oid)
            if item is None:
                raise FilesError(f"unable to get {one} from {one} store: {one} {oid} not found")
            target = ref.get("File") or {}
            try:
                uid, gid, mode = file_owner(target)
            except ValueError as e:
                raise FilesError(str(e)) from None
            # one file per object, as Docker keeps them: two references to one secret share its file
            # (and the last reference's owner and mode)
            path = tdir / f"{kind}-{oid}"
            data = base64.b64decode(item["Data"])
            if item.get("Templating"):
                data = self._expand(task, deps, item, data)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            mounts.append({"Type": "bind", "Source": str(path), "ReadOnly": True,
                           "Target": target_path(kind, target.get("Name") or item["Name"])})  # type: ignore[arg-type]
        return mounts

    def _expand(self, task: dict, deps: dict, item: dict, data: bytes) -> bytes:
        """A templated secret or config, expanded for this task (see :mod:`shoal.model.template`)."""
        driver = (item.get("Templating") or {}).get("Name") or ""
        if driver != "golang":
            raise FilesError(f"unsupported template driver {driver!r}")
        env = dict(e.split("=", 1) for e in ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Env") or []
                   if "=" in e)

        def by_target(kind: str) -> Any:
            def get(target: str) -> str:
                one = SINGULAR[kind]
                for ref in references(task.get("Spec") or {}, kind):  # type: ignore[arg-type]
                    if (ref.get("File") or {}).get("Name") == target:
                        found = (deps.get(kind) or {}).get(ref.get(f"{one.title()}ID"))
                        if found is None:
                            raise TemplateError(f"{one} {ref.get(f'{one.title()}ID')} not found")
                        return base64.b64decode(found["Data"]).decode(errors="replace")
                raise TemplateError(f"{one} target {target} not found")
            return get

        try:
            # Docker's executor gives templates no node description: .Node.Hostname and .Node.Platform are
            # empty there, and so here
            text = expand(data.decode(errors="replace"), context(task, {}, task_name(task), PAYLOAD_T),
                          {"env": lambda v: env.get(v, ""), "secret": by_target("secrets"),
                           "config": by_target("configs")})
        except TemplateError as e:
            raise FilesError(f"failed to expand {item['Name']}: {e}") from None
        return text.encode()

    def release(self, task_id: str) -> None:
        """Remove a task's files (its container is gone)."""
        if task_id and (self.root / task_id).exists():
            shutil.rmtree(self.root / task_id, ignore_errors=True)

    def prune(self, keep: set[str]) -> None:
        """Remove the files of every task not in ``keep``."""
        with contextlib.suppress(OSError):
            for child in self.root.iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
