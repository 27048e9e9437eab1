"""``shoal lab ...``: build and drive a multi-host cluster on this machine (see docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from shoal.lab import faults
from shoal.lab.chaos import Violation, report, run_chaos
from shoal.lab.hosts import LabError, daemon_env
from shoal.lab.lab import DEFAULT_IMAGES, Lab, down, lab_exists


def add_lab_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab`` and its subcommands to the ``shoal`` parser."""
    p = subparsers.add_parser("lab", help="a multi-host cluster on this machine (like kind, for shoal)",
                              description="Hosts are namespaces with their own dockerd and shoald on a shared LAN "
                                          "(192.168.77.0/24). Needs root.")
    sub = p.add_subparsers(dest="lab_cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="build the lab and (unless --no-swarm) form a swarm")
    up.add_argument("--workers", type=int, default=2, metavar="N", help="worker hosts (default 2)")
    up.add_argument("--managers", type=int, default=1, metavar="M", help="manager hosts (default 1)")
    up.add_argument("--no-swarm", action="store_true", help="do not run swarm init/join")
    up.add_argument("--no-images", action="store_true", help=f"do not load {', '.join(DEFAULT_IMAGES)}")
    up.add_argument("--retain", action="store_true", help="keep a lab that failed to come up, for inspection")

    sub.add_parser("down", help="remove the lab and everything it made (safe after a crash)")
    sub.add_parser("ls", help="list hosts: IP, state, pids")

    ex = sub.add_parser("exec", help="run a command inside a host (DOCKER_HOST = its shoald)")
    ex.add_argument("host")
    ex.add_argument("--engine", action="store_true", help="DOCKER_HOST = the host's dockerd instead")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="command and arguments (default: a shell)")

    env = sub.add_parser("env", help="print `export DOCKER_HOST=...` for a host's shoald")
    env.add_argument("host")
    env.add_argument("--engine", action="store_true", help="the host's dockerd instead")

    load = sub.add_parser("load", help="load images (names on this machine's engine, or tar files) into every host")
    load.add_argument("images", nargs="+", metavar="IMAGE")

    ch = sub.add_parser("chaos", help="rounds of faults against a lab of 3 managers + 3 workers, checked after each",
                        description="Builds its own lab (none may exist), runs the rounds, removes the lab; a "
                                    "violation stops the run and keeps the lab and the histories.")
    ch.add_argument("--rounds", type=int, default=11, metavar="N", help="rounds, one fault each (default 11)")
    ch.add_argument("--seed", type=int, default=1, metavar="S", help="seed of the faults and the client (default 1)")
    ch.add_argument("--faults", default="", metavar="KIND,...",
                    help=f"only these kinds (default: all; {', '.join(faults.KINDS)})")
    ch.add_argument("--docker", action="store_true", help="against Docker's own swarm mode (the hosts' dockerds)")
    ch.add_argument("--hold", type=float, default=faults.HOLD, metavar="SECONDS",
                    help=f"how long each fault lasts (default {faults.HOLD:.0f}; a SIGSTOP always 10)")
    ch.add_argument("--out", default="", metavar="DIR", help="results and histories (default /var/tmp/shoal-chaos/...)")

    rep = sub.add_parser("chaos-report", help="a markdown table of chaos runs (their --out directories)")
    rep.add_argument("dirs", nargs="+", metavar="DIR")

    for name, text in (("stop", "stop a host's shoald and dockerd cleanly"),
                       ("start", "start a host's dockerd and shoald (again)"),
                       ("kill", "power loss: SIGKILL all of a host's processes and unplug it"),
                       ("partition", "unplug a host from the LAN (processes keep running)"),
                       ("heal", "plug a partitioned host back in")):
        f = sub.add_parser(name, help=text)
        f.add_argument("hosts", nargs="+", metavar="HOST")
    return p


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run_lab(args: argparse.Namespace) -> int:
    """Run a ``shoal lab`` subcommand; returns the exit code."""
    try:
        return _run(args)
    except LabError as exc:
        print(f"shoal lab {args.lab_cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    cmd = args.lab_cmd
    if cmd == "up":
        if lab_exists():
            print("shoal lab up: a lab already exists; `shoal lab ls` shows it, `shoal lab down` removes it",
                  file=sys.stderr)
            return 1
        try:
            lab = Lab.up(workers=args.workers, managers=args.managers, swarm=not args.no_swarm,
                         images=() if args.no_images else DEFAULT_IMAGES, retain=args.retain)
        except LabError:
            return 1  # Lab.up printed what failed
        print(_table(lab.rows()))
        print(f"\nexport DOCKER_HOST={lab.managers[0].docker_host}   # or: shoal lab exec {lab.managers[0].name} -- sh")
        return 0
    if cmd == "down":
        return 1 if down() else 0
    if cmd == "chaos":
        return _chaos(args)
    if cmd == "chaos-report":
        print(report([Path(d) for d in args.dirs]))
        return 0
    lab = Lab.load()
    if cmd == "ls":
        print(_table(lab.rows()))
        return 0
    if cmd == "env":
        h = lab.host(args.host)
        print(f"export DOCKER_HOST={h.engine_host if args.engine else h.docker_host}")
        return 0
    if cmd == "exec":
        h = lab.host(args.host)
        argv = list(args.argv)
        if argv[:1] == ["--engine"]:  # `exec HOST --engine -- CMD`
            args.engine, argv = True, argv[1:]
        argv = argv[1:] if argv[:1] == ["--"] else argv
        env = {**os.environ, "DOCKER_HOST": h.engine_host if args.engine else h.docker_host,
               "PATH": daemon_env()["PATH"]}
        cwd = os.getcwd()
        wd = cwd if not cwd.startswith(("/run", "/sys", "/proc")) else "/"
        full = h.enter(*(argv or [os.environ.get("SHELL", "/bin/sh")]), wd=wd)
        sys.stdout.flush()
        os.execvpe(full[0], full, env)
    if cmd == "load":
        t0 = time.monotonic()
        loaded = lab.load_images(args.images)
        print(f"loaded {', '.join(args.images)} into {', '.join(loaded) or 'no host'} "
              f"in {time.monotonic() - t0:.1f}s")
        return 0
    for name in args.hosts:
        t0 = time.monotonic()
        getattr(lab, cmd)(name)
        print(f"{name}: {cmd} done in {time.monotonic() - t0:.1f}s ({lab.host(name).status})")
    return 0


def _chaos(args: argparse.Namespace) -> int:
    if lab_exists():
        print("shoal lab chaos: a lab already exists; `shoal lab down` removes it", file=sys.stderr)
        return 1
    kinds = [k for k in args.faults.split(",") if k] or None
    unknown = sorted(set(kinds or ()) - set(faults.KINDS))
    if unknown:
        print(f"shoal lab chaos: unknown fault kind(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    target = "docker" if args.docker else "shoal"
    out = Path(args.out or f"/var/tmp/shoal-chaos/{time.strftime('%Y%m%d-%H%M%S')}-{target}-seed{args.seed}")
    try:
        summary = run_chaos(args.rounds, args.seed, out, docker=args.docker, kinds=kinds, hold=args.hold)
    except Violation as exc:
        print(f"shoal lab chaos: VIOLATION\n{exc}\nresults and histories in {out}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2))
    print(f"results in {out}")
    return 0
