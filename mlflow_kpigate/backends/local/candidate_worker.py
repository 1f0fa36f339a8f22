"""The candidate model's own process: it scores requests the router sends over a socket.

``python -m mlflow_kpigate.backends.local.candidate_worker --socket PATH --model-uri URI
--tracking-uri URI --version V --threshold 0.5 [--threads 1] [--hang-after 30]
[--parent-pid PID] [--drain-s 10]``

The process first ties its life to its parent (:mod:`.process_tie`), then loads the model
with ``mlflow.pyfunc.load_model``, replaces a stale socket file at PATH (but refuses to
steal one another worker still answers on), listens there (mode 0o600) and answers
:mod:`.candidate_protocol` frames until SIGTERM/SIGINT. A connection carries one request
at a time; predicts run on a pool of ``--threads`` threads, so the event loop answers
pings while a predict is stuck. A request is parsed with the model's input schema, exactly
as the router parses it for its own models, and answered with the body MLflow's scoring
server would send plus the interpreted scores (:class:`.predictor.Predictor`).

A model that hangs holds its thread for ever, and Python cannot stop a thread: a
watchdog ends the process (exit code :data:`EXIT_HUNG`) when a predict has run longer than
``--hang-after`` seconds, and the supervisor (:mod:`.candidate_process`) starts a fresh
one. SIGTERM stops accepting connections, lets in-flight predicts finish and answer
(at most ``--drain-s`` seconds) and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mlflow_kpigate.backends.local.candidate_protocol import (
    EXIT_HUNG,
    PingRequest,
    Pong,
    PredictRequest,
    PredictResponse,
    ProtocolError,
    decode_request,
    encode_frame,
    read_frame,
)
from mlflow_kpigate.backends.local.predictor import Predictor
from mlflow_kpigate.backends.local.process_tie import tie_to_parent

__all__ = ["EXIT_HUNG", "EXIT_LOAD_FAILED", "SocketTaken", "WorkerOptions", "main", "parse_args"]

logger = logging.getLogger("mlflow_kpigate.candidate_worker")

#: Exit code when the model could not be loaded or the socket not bound.
EXIT_LOAD_FAILED = 2


@dataclass(frozen=True)
class WorkerOptions:
    """The command line of one worker."""

    socket: str
    model_uri: str
    tracking_uri: str
    version: str
    threshold: float
    threads: int = 1
    hang_after_s: float = 30.0
    parent_pid: int | None = None
    drain_s: float = 10.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_kpigate.backends.local.candidate_worker",
        description="Serve one MLflow pyfunc model to the kpigate router over a Unix socket.")
    parser.add_argument("--socket", required=True, help="the Unix socket's path")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--version", required=True, help="the model version it serves")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=_positive_int, default=1)
    parser.add_argument("--hang-after", type=_positive_float, default=30.0,
                        help="exit (code 70) when a predict runs longer (seconds)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit at once if the parent is not this process")
    parser.add_argument("--drain-s", type=_positive_float, default=10.0,
                        help="on SIGTERM, wait at most this long for in-flight predicts")
    args = parser.parse_args(argv)
    return WorkerOptions(args.socket, args.model_uri, args.tracking_uri, args.version,
                         args.threshold, args.threads, args.hang_after, args.parent_pid,
                         args.drain_s)


class SocketTaken(RuntimeError):
    """The socket path is not free: another worker answers there, or it is not a socket."""


def _replace_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketTaken(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:  # refused: nobody listens, a dead worker's leftover
            os.unlink(path)
            return
    raise SocketTaken(f"another process is listening on {path}")


class WorkerServer:
    """The socket server of one worker: connections, the predict pool, the watchdog."""

    def __init__(self, predictor: Predictor, options: WorkerOptions) -> None:
        self.predictor, self.options = predictor, options
        self.executor = ThreadPoolExecutor(max_workers=options.threads,
                                           thread_name_prefix="kpigate-candidate")
        self.busy = 0  # requests read and not yet answered
        self.stopping = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.inode: int | None = None

    async def _answer(self, request: PingRequest | PredictRequest) -> bytes:
        if isinstance(request, PingRequest):
            return encode_frame(Pong(os.getpid(), self.predictor.running).to_wire())
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.executor, self.predictor.predict, request)
        try:
            return encode_frame(response.to_wire())
        except ProtocolError as exc:  # an answer larger than a frame may be
            failed = PredictResponse(False, None, [], [], False, response.latency_s,
                                     f"model output too large to return: {exc}")
            return encode_frame(failed.to_wire())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.writers.add(writer)
        try:
            while not self.stopping:
                try:
                    data = await read_frame(reader)
                    if data is None:
                        return
                    request = decode_request(data)
                except (ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    logger.warning("dropping a connection: %s", exc)
                    return
                self.busy += 1
                try:
                    writer.write(await self._answer(request))
                    await writer.drain()
                except ConnectionError:
                    return  # the router gave up on it (timeout) and closed the connection
                finally:
                    self.busy -= 1
        except asyncio.CancelledError:
            # Shutdown cancels the connections' tasks; asyncio's server would log each
            # cancelled one as an "Exception in callback" traceback.
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _watchdog(self) -> None:
        limit = self.options.hang_after_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            age = self.predictor.oldest_age()
            if age is not None and age > limit:
                logger.error("a predict has run for %.1f s (limit --hang-after %g s): "
                             "exiting so that the supervisor starts a fresh worker", age, limit)
                logging.shutdown()
                os._exit(EXIT_HUNG)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain; returns the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        path = self.options.socket
        _replace_stale_socket(path)
        previous = os.umask(0o177)  # the socket is born 0o600: no window for others
        try:
            server = await asyncio.start_unix_server(self.handle, path)
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        self.inode = os.stat(path).st_ino
        watchdog = loop.create_task(self._watchdog())
        logger.info("candidate %s serving on %s (pid %d, %d threads)", self.options.version,
                    path, os.getpid(), self.options.threads)
        await stop.wait()
        logger.info("stopping: %d requests in flight", self.busy)
        self.stopping = True
        server.close()
        deadline = time.monotonic() + self.options.drain_s
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.busy:
            logger.warning("%d requests still in flight after %g s; exiting anyway",
                           self.busy, self.options.drain_s)
        for writer in list(self.writers):
            writer.close()
        watchdog.cancel()
        self._unlink_own_socket()
        return 0

    def _unlink_own_socket(self) -> None:
        # Only our own file: a fresh worker may already have replaced it.
        with contextlib.suppress(OSError):
            if os.stat(self.options.socket).st_ino == self.inode:
                os.unlink(self.options.socket)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; returns the process exit code."""
    options = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s candidate-worker[{os.getpid()}]: %(message)s")
    tie_to_parent(options.parent_pid)
    try:
        import mlflow

        mlflow.set_tracking_uri(options.tracking_uri)
        model = mlflow.pyfunc.load_model(options.model_uri)
    except Exception:
        logger.exception("could not load model %s", options.model_uri)
        return EXIT_LOAD_FAILED
    predictor = Predictor(model, options.version, options.threshold)
    try:
        return asyncio.run(WorkerServer(predictor, options).run())
    except SocketTaken as exc:
        logger.error("%s", exc)
        return EXIT_LOAD_FAILED


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: the interpreter would join the predict threads at exit, and one stuck
    # in a hung model would keep the process alive after SIGTERM.
    os._exit(code)
