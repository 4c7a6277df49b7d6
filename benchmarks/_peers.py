# Reference servers: the peers the benchmarks compare this reactor against.
#
# Each peer is the plainest idiomatic asyncio server for its job: a `Protocol` on the default
# event loop, no tuning beyond what a careful user would do, so that "ours / asyncio" measures the
# loop and not a handicapped opponent. Peers speak the same CLI contract as `apps.*`
# (`--host`, `--port 0`, one flushed `listening ...` line on stdout, exit 0 on SIGTERM), so the
# harness starts and stops both sides the same way. They run as their own process:
#     python -m benchmarks._peers echo --host 127.0.0.1 --port 0
"""Asyncio reference servers for the benchmarks."""
import argparse
import asyncio
import logging
import signal
import sys

log = logging.getLogger(__name__)

# asyncio's default backlog is 100: a storm of thousands of connects overflows it and the kernel
# retransmits the dropped SYNs a second later (DESIGN.md, "Performance"). The benchmarks open
# many connections, so the peer gets the same large backlog our listener uses, to be fair.
BACKLOG = 4096


class EchoProtocol(asyncio.Protocol):
    """Echo every byte back (asyncio's transport already sets TCP_NODELAY)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve_echo(host: str, port: int, stop: asyncio.Event) -> None:
    """Serve echo until stop is set, printing the listening line once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening tcp://{bound_host}:{bound_port} echo", flush=True)
    await stop.wait()
    # Not `async with server`: since 3.12.1 wait_closed() waits for every client to leave.
    server.close()


def main(argv: list[str] | None = None) -> int:
    """Run one peer server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._peers", description=__doc__)
    parser.add_argument("service", choices=["echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        loop.run_until_complete(_serve_echo(args.host, args.port, stop))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
