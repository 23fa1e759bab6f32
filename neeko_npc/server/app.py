"""Building and running the daemon: gRPC server, auth, TLS, health, reflection, model loading, role watcher,
logging and signals (``run``)."""

from __future__ import annotations

import hmac
import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import InputError
from .. import defaults
from ..v1 import dialogue_pb2 as pb
from . import launch
from .service import DialogueService, Malformed, refuse_malformed

log = logging.getLogger("neeko_npc.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Dialogue"].full_name
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # probes work without a token


def _lenient(parse):
    def read(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError, or anything else a hostile payload provokes
            return Malformed(f"{type(exc).__name__}: {exc}"[:200])
    return read


_HANDLERS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def add_dialogue_service(servicer, server) -> None:
    """The generated add_DialogueServicer_to_server, with request parsing that never fails: every method of the
    proto's service, its messages read by a deserializer that returns Malformed instead of raising (gRPC would
    answer INTERNAL and log a traceback); the servicer answers INVALID_ARGUMENT."""
    handlers = {}
    for m in pb.DESCRIPTOR.services_by_name["Dialogue"].methods:
        make = _HANDLERS[(m.client_streaming, m.server_streaming)]
        method = getattr(servicer, m.name)
        handlers[m.name] = make(method if m.client_streaming else refuse_malformed(method, m.input_type.name),
                                request_deserializer=_lenient(getattr(pb, m.input_type.name).FromString),
                                response_serializer=getattr(pb, m.output_type.name).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class TokenAuth(grpc.ServerInterceptor):
    """Every call but health checks needs `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token: send metadata 'authorization: Bearer <token>'")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        got = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(got.encode(), self._expected):
            return continuation(details)
        return self._deny_stream if details.method.endswith("/Say") else self._deny_unary


@dataclass
class ServerConfig:
    host: str = defaults.HOST
    port: int = defaults.PORT
    token: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = defaults.WORKERS
    watch_interval: float = defaults.WATCH_INTERVAL  # seconds; 0 disables the roles-folder watcher
    max_converse: int = defaults.MAX_CONVERSE  # Converse calls streaming at once (each holds a worker)
    converse_start_s: float = defaults.CONVERSE_START_S


class Daemon:
    """A running daemon. ``start`` binds at once; the engine loads in the background."""

    def __init__(self, config: ServerConfig, make_engine):
        self.config = config
        if not 1 <= config.max_converse < config.workers:
            raise ValueError(f"max_converse must be at least 1 and below the {config.workers} worker threads, "
                             f"so that health checks and lines always find one (got {config.max_converse})")
        self.service = DialogueService(config.max_converse, config.converse_start_s)
        self.health = health.HealthServicer()
        interceptors = [TokenAuth(config.token)] if config.token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), interceptors=interceptors,
                                  options=[("grpc.so_reuseport", 0)])
        add_dialogue_service(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server)
        address = f"{config.host}:{config.port}"
        try:
            if config.tls_cert or config.tls_key:
                if not (config.tls_cert and config.tls_key):
                    raise InputError("TLS needs both --tls-cert and --tls-key")
                creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc 1.5x raises where older versions returned 0
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {address} (port in use?)")
        self.address = f"{config.host}:{self.port}"
        self._make_engine = make_engine
        self._stop = threading.Event()
        self.loaded = threading.Event()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def start(self) -> "Daemon":
        self.server.start()
        threading.Thread(target=self._load, name="neeko-load", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            engine = self._make_engine()
        except Exception as exc:  # reported through UNAVAILABLE and the log; the daemon stays up
            log.error("model failed to load: %s", exc)
            self.service.load_error = str(exc)
            self.loaded.set()
            return
        self.service.set_engine(engine)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.loaded.set()
        if self.config.watch_interval > 0:
            threading.Thread(target=self._watch, args=(engine,), name="neeko-watch", daemon=True).start()

    def _watch(self, engine) -> None:
        while not self._stop.wait(self.config.watch_interval):
            try:
                if engine.roles_changed():
                    r = engine.reload()
                    log.info("roles folder changed: +%s ~%s -%s", r.added, r.changed, r.removed)
                    for f, err in r.problems.items():
                        log.warning("role file skipped: %s", err)
            except Exception:  # the watcher must never die
                log.exception("role reload failed")

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait()
        if self.service.engine is not None:
            self.service.engine.close()


def run(config: ServerConfig, make_engine, echo=print, verbose: bool = False, parent_pid: int | None = None) -> None:
    """The ``serve`` command, held to the launch contract (server/launch.py): log to stderr, start, write the one
    JSON line on stdout when ready (or failed), serve until SIGTERM, Ctrl-C, Ctrl-Break or the end of
    ``parent_pid``, then stop within ``launch.STOP_S`` seconds.

    ``echo`` prints the human start-up lines (to stderr); an engine that fails to load raises InputError with
    its reason, after the ``failed`` line."""
    from .. import __version__

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    launcher = launch.claim_stdout()
    done = threading.Event()
    launch.stop_signals(done.set)
    try:
        if parent_pid is not None:
            launch.watch_parent(parent_pid, done.set)
        daemon = Daemon(config, make_engine).start()
    except (OSError, InputError) as exc:  # a taken port, a dead --parent-pid: one line for the launcher and the user
        launch.announce(launcher, launch.FAILED, error=str(exc))
        raise InputError(str(exc)) from None
    scheme = "grpcs" if config.tls_cert else "grpc"
    echo(f"neeko-npc {__version__} listening on {scheme}://{daemon.address} (loading the model...)")
    while not daemon.loaded.wait(0.05):
        if done.is_set():  # stopped (or orphaned) while loading
            launch.exit_within()
            daemon.stop(0)
            return
    engine = daemon.service.engine
    if engine is None:
        daemon.stop(0)
        launch.announce(launcher, launch.FAILED, error=f"the model failed to load: {daemon.service.load_error}")
        raise InputError(f"the model failed to load: {daemon.service.load_error}")
    snap = engine.roles()
    echo(f"ready: {len(snap.roles)} role(s) from {engine.roles_dir} on {engine.base.name} ({engine.describe()})"
         + (", token required" if config.token else ""))
    for _, err in sorted(snap.problems.items()):
        echo(f"skipped: {err}")
    launch.announce(launcher, launch.READY, port=daemon.port, pid=os.getpid(), roles=len(snap.roles), version=__version__)

    def report_warm_up() -> None:
        engine.warmed.wait()
        if engine.warm_summary:
            echo(engine.warm_summary)

    threading.Thread(target=report_warm_up, name="neeko-warm-report", daemon=True).start()
    while not done.wait(0.5):  # a timed wait, so Ctrl-C and Ctrl-Break are seen on every platform
        pass
    echo("stopping")
    launch.exit_within()
    daemon.stop(grace=1.0)
