"""The ``shoal`` command: ``shoal daemon`` runs shoald."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from shoal import operations
from shoal.daemon import Daemon, Options
from shoal.lab.cli import add_lab_parser, run_lab


async def _run_daemon(opts: Options) -> None:
    daemon = Daemon(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    try:
        await stop.wait()
    finally:
        await daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shoal", description="Docker Swarm mode, rebuilt in Python")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("daemon", help="run shoald")
    d.add_argument("--data-dir", default="/var/lib/shoal")
    d.add_argument("--socket", default="/run/shoal/shoal.sock")
    d.add_argument("--engine", default="/var/run/docker.sock", help="the local Docker Engine's socket")
    d.add_argument("--etcd-client-port", type=int, default=2379)
    d.add_argument("--etcd-peer-port", type=int, default=2380)
    d.add_argument("--listen-addr", default="", help="cluster port address (default: as swarm init/join says)")
    d.add_argument("--advertise-addr", default="", help="address other nodes reach this one at")
    d.add_argument("--no-networking", action="store_true",
                   help="no overlay networks on this host (e.g. a second shoald sharing a host for tests)")
    d.add_argument("--plugin-dir", default="/run/docker/plugins", help="where the engine looks for plugins")
    d.add_argument("--overlay-key-rotation", type=float, metavar="SECONDS",
                   default=float(os.environ.get("SHOAL_OVERLAY_KEY_ROTATION") or 12 * 3600),
                   help="seconds between an encrypted network's keys, while this node leads (default 12 h, "
                        "or $SHOAL_OVERLAY_KEY_ROTATION)")
    d.add_argument("--debug", action="store_true")
    add_lab_parser(sub)
    operations.add_parsers(sub)
    args = p.parse_args(argv)
    if args.cmd == "lab":
        return run_lab(args)
    if args.cmd in ("backup", "restore"):
        return operations.run(args)
    if args.cmd == "daemon":
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        opts = Options(data_dir=Path(args.data_dir), socket=args.socket, engine=args.engine,
                       etcd_client_port=args.etcd_client_port, etcd_peer_port=args.etcd_peer_port,
                       listen_addr=args.listen_addr, advertise_addr=args.advertise_addr,
                       networking=not args.no_networking, plugin_dir=Path(args.plugin_dir),
                       overlay_key_rotation=args.overlay_key_rotation)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_daemon(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
