# One large array over loopback: this reactor's ArrayHandler against the physical limit (a
# blocking sendall/recv_into pair) and asyncio three ways, same run, alternating.
#
# Each transfer is two fresh processes, a receiver pinned to one CPU and a sender pinned to the
# other (this file re-run with --role), so that neither steals the other's core and each side's
# peak memory is its own: ru_maxrss of a process that did nothing else, less its RSS before the
# payload existed, over the payload size.  A copy of the payload anywhere shows up as ~2.0.
# The sender times from its first send to the receiver's one-byte (or one-frame) answer, so the
# receiver's allocation and every byte's arrival are inside the window; a CRC-32 computed by
# both sides outside the window proves the bytes arrived intact.
#
# The payload is an array.array('d'), and every receiver that allocates its destination does it
# the way protocols.arrays does, from the size announced, inside the timed window: on this
# machine faulting in 256 MiB of fresh pages costs about as much as moving them over loopback,
# and a comparison that left it out of one side would be no comparison.
#
# The cases:
#   blocking        sendall(memoryview) / recv_into(a new array): what the kernel allows
#   ours            protocols.arrays.ArrayHandler on both sides
#   asyncio-whole   transport.write(the whole array); BufferedProtocol receiving into place
#   asyncio-chunks  transport.write(1 MiB slices) under pause/resume_writing; BufferedProtocol
#   asyncio-streams StreamWriter.write(1 MiB) + drain(); StreamReader.readexactly(n)
#   preallocated    blocking, into an array allocated (and faulted in) before the clock starts:
#                   the wire alone, for scale; the ratios are against `blocking`
"""Benchmark one large array over loopback: ours vs a blocking pair vs asyncio (GB/s, memory)."""
import argparse
import array
import asyncio
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import zlib

from benchmarks import _harness
from benchmarks._harness import fmt, median
from protocols.arrays import ArrayHandler
from reactor import Listener, Reactor

log = logging.getLogger(__name__)

IMPLS = ("blocking", "ours", "asyncio-whole", "asyncio-chunks", "asyncio-streams", "preallocated")
CHUNK = 1 << 20
HOST = "127.0.0.1"
ROUND_TIMEOUT = 300.0        # the harness's wait for one side of one transfer
ROLE_TIMEOUT = 60.0          # a side not done by then (plus 1 s per 10 MB) ends itself with
                             # SIGALRM, so that no side outlives a harness that was killed
_PATTERN = bytes(range(251)) * 4177            # ~1 MiB, a multiple of the prime period 251


# -- the two sides, run in their own processes ------------------------------------------------

def rss_kib() -> int:
    """This process's resident set now, KiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_kib() -> int:
    """The most this process has ever had resident, KiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def make_payload(size: int) -> array.array:
    """An array.array('d') of size bytes, filled with a pattern, in one allocation."""
    arr = array.array("d", bytes(8)) * (size // 8)
    view = memoryview(arr).cast("B")
    for pos in range(0, size, len(_PATTERN)):
        piece = view[pos:pos + len(_PATTERN)]
        piece[:] = _PATTERN[:len(piece)]
    return arr


def destination(size: int) -> memoryview:
    """A new array.array('d') of size bytes, allocated as protocols.arrays.allocate does."""
    return memoryview(array.array("d", bytes(8)) * (size // 8)).cast("B")


def listen() -> socket.socket:
    server = socket.create_server((HOST, 0))
    print(f"port {server.getsockname()[1]}", flush=True)
    return server


def receive_blocking(server: socket.socket, view: memoryview | None = None) -> memoryview:
    conn, _ = server.accept()
    with conn:
        head = bytearray(8)
        got = 0
        while got < 8:
            got += conn.recv_into(memoryview(head)[got:])
        if view is None:
            view = destination(int.from_bytes(head, "big"))
        filled = 0
        while filled < view.nbytes:
            n = conn.recv_into(view[filled:])
            if not n:
                raise EOFError("sender closed early")
            filled += n
        conn.sendall(b"k")
    return view


def send_blocking(port: int, payload: memoryview) -> float:
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sock.sendall(payload.nbytes.to_bytes(8, "big"))
        sock.sendall(payload)
        if sock.recv(1) != b"k":
            raise EOFError("no answer")
        return time.perf_counter() - t0


def receive_ours(server: socket.socket) -> memoryview:
    reactor, got = Reactor(), []

    class Receiver(ArrayHandler):
        max_bytes = 1 << 40

        def array_received(self, arr, meta):
            got.append(arr)
            self.send_array(None, b"k")
            self.close()

        def connection_lost(self, exc):
            reactor.stop()

    listener = Listener(server, Receiver)
    reactor.add(listener)
    reactor.run()
    reactor.close()
    return memoryview(got[0]).cast("B")


def send_ours(port: int, payload: array.array) -> float:
    reactor, times = Reactor(), []

    class Sender(ArrayHandler):
        def connection_made(self):
            times.append(time.perf_counter())
            self.send_array(payload)

        def array_received(self, arr, meta):
            times.append(time.perf_counter())
            reactor.stop()

        def connection_lost(self, exc):
            reactor.stop()

    sock = socket.create_connection((HOST, port))
    reactor.add(Sender(sock))
    reactor.run()
    reactor.close()
    if len(times) != 2:
        raise EOFError("the receiver closed without answering")
    return times[1] - times[0]


class _BufferedReceiver(asyncio.BufferedProtocol):
    """asyncio's zero-copy receiving side: the kernel writes straight into the destination."""

    def __init__(self, done: asyncio.Future) -> None:
        self.done, self.head, self.hfill = done, bytearray(8), 0
        self.dest, self.view, self.filled = None, None, 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        if self.dest is None:
            return memoryview(self.head)[self.hfill:]
        return self.view[self.filled:]

    def buffer_updated(self, nbytes):
        if self.dest is None:
            self.hfill += nbytes
            if self.hfill == 8:
                self.view = destination(int.from_bytes(self.head, "big"))
                self.dest = self.view.obj
        else:
            self.filled += nbytes
        if self.dest is not None and self.filled == self.view.nbytes:
            self.transport.write(b"k")
            self.transport.close()
            if not self.done.done():
                self.done.set_result(self.view)


def receive_asyncio(server: socket.socket, impl: str) -> memoryview:
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if impl == "asyncio-streams":
            async def serve(reader, writer):
                n = int.from_bytes(await reader.readexactly(8), "big")
                data = await reader.readexactly(n)
                writer.write(b"k")
                await writer.drain()
                writer.close()
                done.set_result(memoryview(data))
            srv = await asyncio.start_server(serve, sock=server)
        else:
            srv = await loop.create_server(lambda: _BufferedReceiver(done), sock=server)
        result = await done
        srv.close()
        return result
    return asyncio.run(main())


class _ChunkSender(asyncio.Protocol):
    """Writes the payload whole, or in CHUNK slices while the transport is not paused."""

    def __init__(self, payload: memoryview, whole: bool, done: asyncio.Future) -> None:
        self.payload, self.whole, self.done, self.pos, self.paused = payload, whole, done, 0, False

    def connection_made(self, transport):
        self.transport = transport
        self.t0 = time.perf_counter()
        transport.write(self.payload.nbytes.to_bytes(8, "big"))
        if self.whole:
            self.pos = self.payload.nbytes
            transport.write(self.payload)
        else:
            self._feed()

    def _feed(self):
        while not self.paused and self.pos < self.payload.nbytes:
            self.transport.write(self.payload[self.pos:self.pos + CHUNK])
            self.pos += CHUNK

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._feed()

    def data_received(self, data):
        if not self.done.done():
            self.done.set_result(time.perf_counter() - self.t0)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or EOFError("receiver closed without answering"))


def send_asyncio(port: int, payload: memoryview, impl: str) -> float:
    async def main():
        loop = asyncio.get_running_loop()
        if impl == "asyncio-streams":
            reader, writer = await asyncio.open_connection(HOST, port)
            t0 = time.perf_counter()
            writer.write(payload.nbytes.to_bytes(8, "big"))
            for pos in range(0, payload.nbytes, CHUNK):
                writer.write(payload[pos:pos + CHUNK])
                await writer.drain()
            await reader.readexactly(1)
            seconds = time.perf_counter() - t0
            writer.close()
            return seconds
        done = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _ChunkSender(payload, impl == "asyncio-whole", done), HOST, port)
        seconds = await done
        transport.close()
        return seconds
    return asyncio.run(main())


def run_role(args: argparse.Namespace) -> int:
    """One side of one transfer; prints one JSON line."""
    signal.alarm(int(ROLE_TIMEOUT + args.size / 10e6))
    if args.cpu is not None:
        _harness.pin_self(args.cpu)
    if args.role == "receiver":
        server = listen()
        base = rss_kib()
        cpu0 = time.process_time()
        if args.impl == "blocking":
            view = receive_blocking(server)
        elif args.impl == "preallocated":
            view = destination(args.size)
            view[::4096] = bytes(len(view[::4096]))          # fault every page in now
            view = receive_blocking(server, view)
        elif args.impl == "ours":
            view = receive_ours(server)
        else:
            view = receive_asyncio(server, args.impl)
        cpu = time.process_time() - cpu0
        result = {"nbytes": view.nbytes, "crc": zlib.crc32(view)}
    else:
        base = rss_kib()
        payload = make_payload(args.size)
        view = memoryview(payload).cast("B")
        crc = zlib.crc32(view)
        cpu0 = time.process_time()
        if args.impl in ("blocking", "preallocated"):
            seconds = send_blocking(args.port, view)
        elif args.impl == "ours":
            seconds = send_ours(args.port, payload)
        else:
            seconds = send_asyncio(args.port, view, args.impl)
        cpu = time.process_time() - cpu0
        result = {"nbytes": view.nbytes, "crc": crc, "seconds": seconds}
    result.update(base_kib=base, peak_kib=peak_kib(), cpu=cpu)
    print(json.dumps(result), flush=True)
    return 0


# -- the harness ------------------------------------------------------------------------------

def transfer(impl: str, size: int, server_cpu: int | None, client_cpu: int | None) -> dict:
    """One transfer in two fresh processes; returns GB/s and both sides' peak/payload."""
    me = [sys.executable, "-m", "benchmarks.arrays", "--impl", impl, "--size", str(size)]
    pin = lambda cpu: [] if cpu is None else ["--cpu", str(cpu)]
    receiver = subprocess.Popen(me + ["--role", "receiver"] + pin(server_cpu), cwd=_harness.REPO_ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        line = receiver.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"{impl} receiver printed {line!r}")
        sender = subprocess.Popen(me + ["--role", "sender", "--port", line.split()[1]] + pin(client_cpu),
                                  cwd=_harness.REPO_ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, text=True)
        sent_out, _ = sender.communicate(timeout=ROUND_TIMEOUT)
        recv_out, _ = receiver.communicate(timeout=ROUND_TIMEOUT)
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    if sender.returncode or receiver.returncode:
        raise RuntimeError(f"{impl}: sender exited {sender.returncode}, receiver {receiver.returncode}")
    sent, got = json.loads(sent_out.splitlines()[-1]), json.loads(recv_out.splitlines()[-1])
    if (got["nbytes"], got["crc"]) != (sent["nbytes"], sent["crc"]):
        raise RuntimeError(f"{impl}: the bytes received differ from the bytes sent")
    mem = lambda side: (side["peak_kib"] - side["base_kib"]) * 1024 / size
    return {"gb_per_s": size / sent["seconds"] / 1e9, "seconds": sent["seconds"],
            "sender_mem": mem(sent), "receiver_mem": mem(got),
            "sender_cpu_ms": sent["cpu"] * 1e3, "receiver_cpu_ms": got["cpu"] * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arrays", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (3 instead of 7)")
    parser.add_argument("--rounds", type=int, help="transfers per case")
    parser.add_argument("--size", type=float, default=256, help="payload in MiB (default 256)")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help=f"comma-separated cases (default all: {','.join(IMPLS)})")
    parser.add_argument("--json", action="store_true", help="one JSON line per case, no table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every transfer")
    # The sides of one transfer (internal).
    parser.add_argument("--role", choices=["sender", "receiver"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        args.size = int(args.size)
        return run_role(args)

    _harness.setup_logging(args.verbose)
    size = int(args.size * 2**20) // 8 * 8
    rounds = args.rounds or (3 if args.quick else 7)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if size <= 0 or rounds < 1 or not impls or set(impls) - set(IMPLS):
        raise SystemExit(f"--size > 0, --rounds >= 1, --impls among {','.join(IMPLS)}")
    server_cpu, client_cpu, pinning = _harness.plan_cpus()
    results: dict[str, list[dict]] = {impl: [] for impl in impls}
    for n in range(rounds):                       # alternating: drift falls on every case alike
        for impl in impls:
            r = transfer(impl, size, server_cpu, client_cpu)
            log.debug("round %d %s: %.2f GB/s", n, impl, r["gb_per_s"])
            results[impl].append(r)
    summary = {impl: {key: median([r[key] for r in rs])
                      for key in ("gb_per_s", "seconds", "sender_mem", "receiver_mem",
                                  "sender_cpu_ms", "receiver_cpu_ms")}
               for impl, rs in results.items()}
    limit = summary.get("blocking", {}).get("gb_per_s")
    for impl in impls:
        summary[impl]["vs_blocking"] = summary[impl]["gb_per_s"] / limit if limit else None
    if args.json:
        for impl in impls:
            print(json.dumps({"benchmark": "arrays", "case": impl, "size": size, "rounds": rounds,
                              "pinning": pinning, **summary[impl],
                              "transfers": results[impl]}), flush=True)
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"arrays: one {size / 2**20:g} MiB array over {HOST}, sender -> receiver, each side a "
          f"fresh process; {pinning}")
    print(f"  {rounds} transfers per case, alternating; medians; GB/s = 1e9 bytes/s from first "
          f"send to the receiver's answer; mem = peak RSS growth / payload; cpu = the side's "
          f"CPU time for the transfer (steadier than GB/s on a busy machine); "
          f"load average {fmt(load, '.2f')}")
    print(f"{'case':<16} {'GB/s':>6} {'x blocking':>10} {'sender mem':>10} {'receiver mem':>12} "
          f"{'sender cpu ms':>13} {'receiver cpu ms':>15}")
    for impl in impls:
        s = summary[impl]
        print(f"{impl:<16} {fmt(s['gb_per_s'], '.2f'):>6} {fmt(s['vs_blocking'], '.2f'):>10} "
              f"{fmt(s['sender_mem'], '.2f'):>9}x {fmt(s['receiver_mem'], '.2f'):>11}x "
              f"{fmt(s['sender_cpu_ms'], '.0f'):>13} {fmt(s['receiver_cpu_ms'], '.0f'):>15}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
