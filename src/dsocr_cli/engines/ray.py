"""Many hosts: `--ray ADDRESS` runs the workers as Ray actors, one per GPU of the cluster.

The driver is the same as for one host (engines/pool.py): it keeps discovery, rendering, the
output lock and every write, and hands rendered pages out as actors ask for them. Only the
connection differs: each actor runs the worker loop (engines/worker.py) on a thread, and a pair
of driver threads carries its messages over Ray calls. An actor that dies, or whose node goes,
closes its connection like a dead process does, and its pages go to another actor once.

No wait on a running actor is unbounded: an actor answers the driver's `take` within HEARTBEAT
seconds even with nothing to say, so one that has not answered in LOST_AFTER seconds is lost,
whether or not Ray has noticed yet (a call on a node that vanished can wait for minutes). Only an
actor's creation is waited for without a bound: it may wait for room in the cluster, and it holds
no page meanwhile.

Ray is an optional extra (`pip install 'dsocr[ray]'`), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection

from dsocr_cli.engines.pool import WorkerPool
from dsocr_cli.engines.worker import load_and_serve
from dsocr_cli.errors import SetupError
from dsocr_cli.options import EngineOptions

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds an actor's `take` waits for a message before answering None
LOST_AFTER = 60.0  # seconds without any answer from a running actor before it counts as lost


class _QueueConnection:
    """The worker loop's connection, inside an actor: two local queues."""

    def __init__(self, inbound: queue.Queue, outbound: queue.Queue):
        self.inbound, self.outbound = inbound, outbound

    def send(self, message) -> None:
        """To the driver, through the actor's `take`."""
        self.outbound.put(message)

    def recv(self):
        """From the driver, put there by the actor's `give`; blocks like a pipe."""
        return self.inbound.get()


class WorkerActor:
    """One engine on one Ray worker: loads it on a thread and serves the driver's pages."""

    def __init__(self, slot: int, factory, options: EngineOptions):
        self.inbound: queue.Queue = queue.Queue()
        self.outbound: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, args=(slot, factory, options), daemon=True).start()

    def _run(self, slot: int, factory, options: EngineOptions) -> None:
        conn = _QueueConnection(self.inbound, self.outbound)
        if load_and_serve(slot, factory, options, conn):
            conn.send(("stopped",))

    def take(self):
        """The next message for the driver, or None after HEARTBEAT seconds: the answer itself
        tells the driver that the actor is alive."""
        try:
            return self.outbound.get(timeout=HEARTBEAT)
        except queue.Empty:
            return None

    def give(self, message) -> None:
        """A message from the driver for the worker loop (jobs, [] or None to stop)."""
        self.inbound.put(message)


class RayLauncher:
    """Starts WorkerActors spread over the cluster, one GPU each where the cluster has GPUs."""

    def __init__(self, ray, factory, options: EngineOptions, gpus: bool):
        self.ray = ray
        self.factory = factory
        self.options = options
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_concurrency=2, **resources)(WorkerActor)

    def launch(self, slot: int) -> tuple[Connection, object]:
        """An actor, spread over the nodes, behind a local pipe relayed by two threads, so the pool
        drives it like a spawned worker."""
        actor = self.actor_class.options(scheduling_strategy="SPREAD").remote(slot, self.factory, self.options)
        driver_end, relay_end = Pipe()
        threading.Thread(target=self._to_driver, args=(actor, relay_end), daemon=True).start()
        threading.Thread(target=self._to_actor, args=(actor, relay_end), daemon=True).start()
        return driver_end, actor

    def _to_driver(self, actor, relay: Connection) -> None:
        """Actor -> driver; an actor or node that is gone, or silent for LOST_AFTER seconds,
        closes the connection."""
        try:
            self.ray.get(actor.__ray_ready__.remote())  # created: it may first wait for room
            while True:
                message = self.ray.get(actor.take.remote(), timeout=LOST_AFTER)
                if message is None:
                    continue
                if message[0] == "stopped":
                    break
                relay.send(message)
        except Exception as exc:  # ActorDiedError, ActorUnavailableError, GetTimeoutError, a lost node
            log.debug("actor connection closed: %s: %s", type(exc).__name__, exc)
        finally:
            _hang_up(relay)

    def _to_actor(self, actor, relay: Connection) -> None:
        """Driver -> actor, until the driver says stop or the connection closes."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                message = relay.recv()
                actor.give.remote(message)
                if message is None:
                    return

    def stop(self, handle, grace: float) -> None:
        """Kill the actor: Ray frees its GPU; one already gone is fine."""
        with contextlib.suppress(Exception):
            self.ray.kill(handle)


def _hang_up(relay: Connection) -> None:
    """Close the relay so that both the driver and the other relay thread see the end at once
    (a plain close leaves a thread blocked in recv on it, and the driver never hears)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(relay.fileno()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    with contextlib.suppress(OSError):
        relay.close()


def connect(address: str):
    """Import Ray and join the cluster; either failing is a setup error (exit 4)."""
    try:
        import ray
    except ImportError:
        raise SetupError("--ray needs Ray, which is not installed", "pip install 'dsocr[ray]'") from None
    hint = "start it with `ray start --head`, or pass its address (host:port, ray://host:10001)"
    why = _unreachable(address)
    if why is None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            return ray
        except Exception as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise SetupError(f"cannot reach the Ray cluster at {address}: {why}", hint)


def _unreachable(address: str) -> str | None:
    """Why host:port takes no connection, found in seconds (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None  # `auto` and the like: Ray finds the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def start_ray_pool(factory, options: EngineOptions, events=None) -> WorkerPool:
    """One actor per GPU of the cluster (one per node without GPUs), at most --workers."""
    ray = connect(options.ray)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if options.device != "cpu" else 0
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    count = gpus or max(1, nodes)
    if options.workers:
        count = min(count, options.workers) if gpus else options.workers
    launcher = RayLauncher(ray, factory, options, gpus > 0)
    pool = WorkerPool(launcher, count, options.engine, events)
    try:
        return pool.start()
    except BaseException:
        ray.shutdown()
        raise
