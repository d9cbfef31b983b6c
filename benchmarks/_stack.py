"""Shared benchmark plumbing: AWS in moto_server, loopback providers, handler processes.

The API is small on purpose (``benchmarks/batch.py`` uses it too)::

    with BenchStack(latency=0.0, tracing=True) as stack:  # moto_server, the providers, resources
        stack.python, stack.interpreter        # the children's command line; what it runs
        stack.env, stack.resources             # the relay's variables; queue URLs, table, secrets
        env = stack.process_env("delivery")    # the whole environ for a handler child process
        stack.process_env("webhook", bytecode="none")  # ... its layer without bytecode (BYTECODE)
        stack.apply("delivery")                # ... or the same variables in this process
        stack.set_latency(0.05)                # provider answer delay (s), both providers
        stack.reset(); stack.peak_in_flight()  # sandbox counters, per provider
        stack.received()                       # requests the providers accepted (2xx)
        stack.trace_datagrams                  # X-Ray segments the UDP "daemon" received
    BenchStack(python="/path/to/python3.13")  # children on another CPython (see below)

    message(i) / http_event(body) / sqs_event(bodies)   # valid messages and Lambda events
    load_handler("webhook"), lambda_context()          # in-process: relay_local's own loaders
    run_child(HANDLERS["webhook"], env, events, ..., python=stack.python)  # a fresh process
    import_statements(path), PYTHON, TIMEOUTS          # for -X importtime and the like
    summarize(values), markdown_table(...), write_result(path, data, python=stack.interpreter)

In-process with tracing on, set ``os.environ["_X_AMZN_TRACE_ID"]`` (sampled) before each
invocation, as Lambda does; ``_child.py`` does it for child processes.

``BENCH_RELAY_ROOT=/path/to/copy`` points HANDLERS and the layer at a copy of the relay.

The layer's bytecode (``process_env(..., bytecode=...)``, see BYTECODE): by default the layer's
modules are the dev venv's, with the ``__pycache__`` the venv has written; "none" is a copy of
the same files without any, as a layer built with no bytecode is on Lambda (/opt is read-only:
each cold start compiles every module it imports); "shipped" is that copy compiled as the
layer build does (``compileall --invalidation-mode unchecked-hash``, by the children's
interpreter). Both copies run with PYTHONDONTWRITEBYTECODE, so every process starts as the first
did. The floor's and the runtime's modules (boto3, botocore, urllib3, the standard library) keep
their caches in all three, as the Lambda runtime ships its own with bytecode.
(PYTHONPYCACHEPREFIX would not do: it moves every module's cache, the standard library's and
botocore's too.)

The children's interpreter: by default the dev venv's (``PYTHON``), the layer and the runtime
symlinks to the venv's installed distributions. ``BenchStack(python=...)`` runs them on another
CPython (as Lambda's python3.13), whose site cannot be the venv's (built for its version: wrapt
has compiled extensions): the venv's pip installs wheels for that version and this machine, the
layer's pinned requirements and the runtime's distributions at the versions the venv has, into
``.venv/bench-sites/<version>-<hash>/{layer,runtime}``, compiled there by that interpreter (as
the venv's caches are), kept for the next run. The relay itself is linked as by default.

The handler environment mirrors ``relay_local.stack.DevStack`` (same variable names, the same
moto resources from template.yaml via ``relay_local.resources``) plus template.yaml's Globals
(POWERTOOLS_*) and the Lambda runtime's own variables. X-Ray tracing is on by default, as with
``Tracing: Active``: Powertools' Tracer is live when ``LAMBDA_TASK_ROOT`` is set, the X-Ray SDK
then runs in its Lambda mode, and the child sets ``_X_AMZN_TRACE_ID`` (sampled) per invocation,
so segments are built and sent over UDP to a sink here, as they would be to Lambda's daemon.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._providers import ProviderProcess
from relay_local.checkout import revision
from relay_local.stack import end

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from types import TracebackType

    from relay_local.resources import StackResources
    from relay_local.sandbox import Provider

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CHILD = BENCH / "_child.py"
# BENCH_RELAY_ROOT=/tmp/copy measures a scratch copy of the relay (functions/, layers/relay/)
# against the same floors: how a proposed change is measured before it is made.
RELAY_ROOT = Path(os.environ.get("BENCH_RELAY_ROOT") or REPO).resolve()
LAYER = RELAY_ROOT / "layers" / "relay"
# Entry points by name: the relay's handlers and their hand-written floors.
HANDLERS: dict[str, Path] = {
    "webhook": RELAY_ROOT / "functions" / "webhook" / "app.py",
    "delivery": RELAY_ROOT / "functions" / "delivery" / "app.py",
    "webhook-floor": BENCH / "floor" / "webhook.py",
    "delivery-floor": BENCH / "floor" / "delivery.py",
}
PROVIDERS: tuple[Provider, ...] = ("lancepilot", "fluents")
# What a handler can import on Lambda: the layer (its pinned requirements and the relay) and the
# runtime's own boto3 stack. Children run with ``python -S`` and only these on PYTHONPATH, so
# what the dev venv has besides (awscrt, pyOpenSSL: botocore picks them up if present, ~0.1 s)
# is not imported, as it would not be on Lambda.
RUNTIME_DISTS = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
PYTHON = (sys.executable, "-S")
# BenchStack(python=...): the sites built for another interpreter, one per version and inputs
SITES = REPO / ".venv" / "bench-sites"
# Children start through a shell that forks them: on Linux a process's ru_maxrss starts at its
# spawner's peak RSS when spawned directly (fork/vfork, then exec, keep the high-water mark),
# which would report this process's memory, not the handler's. A fork from dash resets it.
LAUNCH = ("/bin/sh", "-c", '"$@" & wait $!', "sh")
# Lambda's timeouts in template.yaml: the webhook 28 s, the delivery function 60 s.
TIMEOUTS = {"webhook": 28.0, "delivery": 60.0}
# run_child(wrapper=CALLGRIND) counts a child's user-space instructions; COLLECTED finds the total
CALLGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
COLLECTED = re.compile(r"Collected : (\d+)")
# The layer's bytecode in a child: the dev venv's caches; none (a layer built without bytecode,
# on read-only /opt); shipped (compiled in the layer, unchecked-hash). See the module docstring.
BYTECODE = ("cached", "none", "shipped")


def instructions_counted(name: str, result: Mapping[str, Any]) -> int:
    """The instruction count callgrind reported for a run_child(wrapper=CALLGRIND) result."""
    found = COLLECTED.search(result["wrapper_stderr"])
    if found is None:
        raise RuntimeError(f"{name}: no count from callgrind: {result['wrapper_stderr']}")
    return int(found.group(1))


class BenchStack:
    """moto_server and the two provider sandboxes (a process each), the stack's resources.

    ``start`` points this process's boto3 at moto (``AWS_*`` in ``os.environ``, as DevStack
    does) so it can create the resources; ``stop`` puts ``os.environ`` back.
    """

    def __init__(
        self,
        latency: float = 0.0,
        tracing: bool = True,
        extra_env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.latency = latency
        self._python = python
        # The children's command line and what it runs (a path given is probed in start).
        self.python: tuple[str, ...] = PYTHON
        self.interpreter = {
            "path": sys.executable,
            "executable": sys.executable,
            "version": sys.version.split()[0],
            "cache_tag": sys.implementation.cache_tag or "",
        }
        self.tracing = tracing
        self.extra_env = dict(extra_env or {})
        self.providers: ProviderProcess | None = None
        self.resources: StackResources | None = None
        self.aws_env: dict[str, str] = {}
        self.env: dict[str, str] = {}  # the relay's own variables (both functions)
        self.trace_datagrams = 0
        self._moto: subprocess.Popen[bytes] | None = None
        self._xray: socket.socket | None = None
        self._saved_environ: dict[str, str] | None = None
        self._site: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> BenchStack:
        from relay_local import resources
        from relay_local.stack import (
            DEV_API_KEY,
            DEV_FROM_NUMBER,
            DEV_SIGNING_SECRET,
            DEV_TOKENS,
            DEV_WORKSPACE,
            start_moto_server,
        )

        if self._python is not None:  # before anything starts: a wrong path fails at once
            self.interpreter = probe_python(self._python)
            # Its real executable: a pyenv shim (a shell script) would add its own start to each.
            self.python = (self.interpreter["executable"], "-S")
        self._saved_environ = dict(os.environ)
        host = "127.0.0.1"
        self._moto, port = start_moto_server(host)  # ephemeral port: never 3000-3002 or 4566
        self.aws_env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
        os.environ.update(self.aws_env)
        os.environ.pop("AWS_PROFILE", None)

        self.providers = ProviderProcess(host, self.latency)  # their CPU is not the handler's
        auth = {"api_keys": [DEV_API_KEY], "signing_secrets": [DEV_SIGNING_SECRET]}
        prefix = f"webhook-relay-bench-{uuid.uuid4().hex[:8]}"
        made = resources.create(dict(DEV_TOKENS), auth, prefix=prefix)
        self.resources = made
        # DevStack's function environment, minus its local shortcuts (secrets cached 5 s):
        # benchmarks run with the deployed defaults.
        self.env = {
            "PROVIDER_TOKENS_SECRET": made.tokens_secret,
            "RELAY_AUTH_SECRET": made.auth_secret,
            "IDEMPOTENCY_TABLE": made.table,
            "DELIVERY_QUEUE_URL": made.queue_url,
            "LANCEPILOT_API_URL": self.providers.base_urls["lancepilot"],
            "FLUENTS_API_URL": self.providers.base_urls["fluents"],
            "LANCEPILOT_WORKSPACE_ID": DEV_WORKSPACE,
            "FLUENTS_FROM_NUMBER": DEV_FROM_NUMBER,
            "DEFAULT_PROVIDER": "",
            # template.yaml Globals, with the parameters' defaults.
            "POWERTOOLS_SERVICE_NAME": "webhook-relay",
            "POWERTOOLS_METRICS_NAMESPACE": "WebhookRelay",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "IDEMPOTENCY_TTL_SECONDS": "86400",
            **self.extra_env,
        }
        self._start_xray_sink(host)
        self._site = tempfile.TemporaryDirectory(prefix="webhook-relay-bench-")
        site = Path(self._site.name)
        if self._python is None:
            _link_dists(site / "layer", _layer_dists(), extra={"relay": LAYER / "relay"})
            _link_dists(site / "runtime", RUNTIME_DISTS)
            return self
        built = _target_site(self.interpreter)
        _link_entries(site / "layer", built / "layer", extra={"relay": LAYER / "relay"})
        (site / "runtime").symlink_to(built / "runtime")
        return self

    def layer_dir(self, bytecode: str = "cached") -> Path:
        """The layer's directory for children, with its bytecode as ``bytecode`` says."""
        assert self._site is not None
        site = Path(self._site.name)
        if bytecode == "cached":
            return site / "layer"
        if bytecode not in BYTECODE:
            raise ValueError(f"bytecode: one of {BYTECODE}, not {bytecode!r}")
        target = site / f"layer-{bytecode}"
        if not target.exists():
            _copy_layer(site / "layer", target, self.python if bytecode == "shipped" else None)
        return target

    def stop(self) -> None:
        if self.providers is not None:
            self.providers.stop()
            self.providers = None
        if self._moto is not None:
            end(self._moto)
            self._moto = None
        if self._xray is not None:
            self._xray.close()
            self._xray = None
        if self._site is not None:
            self._site.cleanup()
            self._site = None
        if self._saved_environ is not None:
            os.environ.clear()
            os.environ.update(self._saved_environ)
            self._saved_environ = None

    def __enter__(self) -> BenchStack:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a half-started stack leaves no moto_server or sandbox behind
            raise

    @property
    def moto_pid(self) -> int | None:
        return self._moto.pid if self._moto is not None else None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def function_env(self, function: str, tracing: bool | None = None) -> dict[str, str]:
        """The variables Lambda would give ``function`` ("webhook" or "delivery"): template
        Globals, the function's own, the runtime's, and the X-Ray wiring when tracing."""
        name = function.removesuffix("-floor")
        env = {**self.aws_env, **self.env}
        assert self.resources is not None
        env["DEAD_LETTER_QUEUE_URL"] = self.resources.dlq_url  # template Globals: both functions
        if name == "delivery":
            env["MAX_RECEIVE_COUNT"] = str(self.resources.max_receive_count)
            env["PROVIDER_CONCURRENCY"] = "10"
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": f"webhook-relay-{name}",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
                # Set by Lambda for every function; relay/__init__.py pauses the GC on it.
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            }
        )
        # Lambda always sets these; without LAMBDA_TASK_ROOT the X-Ray SDK would build its
        # centralized sampler (an X-Ray botocore client: ~17 MB and tens of ms) even with
        # Powertools' Tracer off, which no Lambda function does.
        assert self._xray is not None
        host, port = self._xray.getsockname()[:2]
        env["LAMBDA_TASK_ROOT"] = str(HANDLERS[function].parent)
        env["AWS_XRAY_DAEMON_ADDRESS"] = f"{host}:{port}"
        env["AWS_XRAY_CONTEXT_MISSING"] = "LOG_ERROR"
        if not (self.tracing if tracing is None else tracing):
            env["POWERTOOLS_TRACE_DISABLED"] = "true"  # as Tracing: PassThrough, or disabled
        return env

    def process_env(
        self, function: str, tracing: bool | None = None, bytecode: str = "cached"
    ) -> dict[str, str]:
        """A complete, clean environ for a ``self.python`` child running ``HANDLERS[function]``.

        PYTHONPATH is Lambda's order: the function's directory (/var/task), the layer
        (/opt/python), the runtime's boto3 (/var/runtime). The floors get no layer: they must
        do without it. ``bytecode``: the layer's, one of BYTECODE (the floors ignore it).
        """
        assert self._site is not None
        site = Path(self._site.name)
        paths = [str(HANDLERS[function].parent)]
        extra: dict[str, str] = {}
        if not function.endswith("-floor"):
            paths.append(str(self.layer_dir(bytecode)))
            if bytecode != "cached":
                extra["PYTHONDONTWRITEBYTECODE"] = "1"  # as on read-only /opt: every run alike
        paths.append(str(site / "runtime"))
        keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        return {
            **keep,
            **self.function_env(function, tracing),
            **extra,
            "PYTHONPATH": os.pathsep.join(paths),
        }

    def apply(self, function: str, tracing: bool | None = None) -> None:
        """Put ``function``'s environment into this process (before loading a handler here)."""
        os.environ.update(self.function_env(function, tracing))

    def set_latency(self, seconds: float) -> None:
        self._providers().ask("latency", seconds=seconds)

    def reset(self) -> None:
        """Forget what the sandboxes received and their peak in flight."""
        self._providers().ask("reset")

    def peak_in_flight(self) -> dict[str, int]:
        return {name: s["peak_in_flight"] for name, s in self._providers().stats().items()}

    def received(self) -> int:
        """Requests the sandboxes answered with 2xx (the messages delivered)."""
        return sum(s["accepted"] for s in self._providers().stats().values())

    def arrivals(self) -> list[float]:
        """When each request reached a sandbox (time.monotonic(), oldest first)."""
        return sorted(t for s in self._providers().stats().values() for t in s["arrivals"])

    def _providers(self) -> ProviderProcess:
        if self.providers is None:
            raise RuntimeError("the stack is not running; call start() first")
        return self.providers

    def _start_xray_sink(self, host: str) -> None:
        # Stands in for Lambda's X-Ray daemon: counts and drops the segments.
        self._xray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._xray.bind((host, 0))
        sink = self._xray

        def drain() -> None:
            while True:
                try:
                    sink.recv(65536)
                except OSError:
                    return
                self.trace_datagrams += 1

        threading.Thread(target=drain, name="xray-sink", daemon=True).start()


def _layer_dists() -> list[str]:
    lines = (LAYER / "requirements.txt").read_text().splitlines()
    return [line.split("==")[0].strip() for line in lines if line.strip() and line[0] != "#"]


def _copy_layer(links: Path, target: Path, compiler: Sequence[str] | None) -> None:
    """Copy the layer (a directory of symlinks, see _link_dists) as files, leaving out every
    ``__pycache__``; with ``compiler`` (the children's interpreter), then compile it as
    layers/relay/Makefile does: bytecode is per version, so by the interpreter that reads it."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    target.mkdir(parents=True)
    for entry in links.iterdir():
        source = entry.resolve()
        if source.is_dir():
            shutil.copytree(source, target / entry.name, ignore=skip)
        elif source.suffix != ".pyc":
            shutil.copy2(source, target / entry.name)
    if compiler is not None:
        _compileall(compiler, target, "unchecked-hash")


def _compileall(python: Sequence[str], target: Path, mode: str) -> None:
    # -I: the parent's PYTHON* variables (PYTHONPATH of another version) must not reach it.
    command = [*python, "-I", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", mode]
    done = subprocess.run([*command, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compileall failed in {target}:\n{done.stdout}{done.stderr}")


def probe_python(python: str) -> dict[str, str]:
    """What ``python`` is: the path given, its real executable, version and bytecode tag."""
    code = (
        "import json, sys; print(json.dumps({'executable': sys.executable, "
        "'version': sys.version.split()[0], 'cache_tag': sys.implementation.cache_tag}))"
    )
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(
            f"cannot run {python}: {getattr(error, 'stderr', '') or error}"
        ) from None
    found: dict[str, str] = json.loads(done.stdout)
    if not (found["cache_tag"] or "").startswith("cpython-"):
        raise RuntimeError(f"{python}: not CPython ({found['cache_tag']}): wheels are cp only")
    return {"path": python, **found}


def _manylinux_platforms() -> list[str]:
    """pip ``--platform`` tags this machine runs: manylinux_2_N down to 2_17 for its glibc, and
    manylinux2014 (pip widens it to manylinux2010 and manylinux1)."""
    arch = platform.machine()
    libc = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17"  # "glibc 2.36"
    minor = int(libc.split()[-1].split(".")[1])
    return [f"manylinux_2_{n}_{arch}" for n in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]


def _target_site(interpreter: Mapping[str, str]) -> Path:
    """``SITES/<version>-<hash>``: ``layer`` (the pinned requirements, as the layer build
    installs them) and ``runtime`` (RUNTIME_DISTS at the dev venv's versions), wheels for
    ``interpreter``'s version and this machine, compiled by it. Built once, then reused."""
    version = interpreter["version"]
    requirements = LAYER / "requirements.txt"
    runtime = [f"{dist}=={importlib.metadata.version(dist)}" for dist in RUNTIME_DISTS]
    platforms = _manylinux_platforms()
    inputs = "\n".join([requirements.read_text(), *runtime, *platforms])
    site = SITES / f"{version}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"
    if site.is_dir():
        return site
    SITES.mkdir(parents=True, exist_ok=True)
    # Built beside it, renamed into place only once complete: an interrupted build is not reused.
    scratch = Path(tempfile.mkdtemp(prefix=f".{site.name}-", dir=SITES))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-compile", "--no-deps", "--only-binary=:all:", "--implementation", "cp"]
    pip += ["--python-version", ".".join(version.split(".")[:2])]
    pip += [f"--platform={tag}" for tag in platforms]
    try:
        print(f"bench: installing wheels for Python {version} into {site}", file=sys.stderr)
        # --no-deps, as layers/relay/Makefile: requirements.txt lists every transitive one.
        subprocess.run(
            [*pip, "--target", str(scratch / "layer"), "-r", str(requirements)], check=True
        )
        subprocess.run([*pip, "--target", str(scratch / "runtime"), *runtime], check=True)
        for part in ("layer", "runtime"):
            shutil.rmtree(scratch / part / "bin", ignore_errors=True)
        # Timestamp-checked caches, as the venv's own: what "cached" and the runtime use.
        _compileall((interpreter["executable"], "-S"), scratch, "timestamp")
        scratch.rename(site)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if not site.is_dir():  # unless another run has just built it
            raise
    return site


def _link_entries(target: Path, source: Path, extra: Mapping[str, Path] | None = None) -> None:
    """A directory of symlinks to each entry of ``source`` (plus ``extra``), as _link_dists
    makes: _copy_layer copies either kind."""
    target.mkdir(parents=True)
    for name, path in (extra or {}).items():
        (target / name).symlink_to(path)
    for entry in source.iterdir():
        if entry.name != "__pycache__" and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)


def _link_dists(
    target: Path, dists: Iterable[str], extra: Mapping[str, Path] | None = None
) -> None:
    """A directory of symlinks to these installed distributions' top-level modules."""
    target.mkdir(parents=True)
    for name, path in (extra or {}).items():
        (target / name).symlink_to(path)
    for dist in dists:
        found = importlib.metadata.distribution(dist)
        base = Path(str(found.locate_file("")))
        tops = {f.parts[0] for f in found.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            if not (target / top).exists() and not top.endswith("-stubs"):
                (target / top).symlink_to(base / top)


# --- messages and events --------------------------------------------------------------------


def message(i: int, provider: str | None = None, key: str | None = None) -> dict[str, Any]:
    """A valid canonical message (alternating providers), with a unique idempotency key."""
    provider = provider or PROVIDERS[i % 2]
    body: dict[str, Any] = {
        "provider": provider,
        "to": "+14155550123",
        "text": f"Benchmark message {i}: your order has shipped.",
        "idempotency_key": key or f"bench-{uuid.uuid4().hex}",
    }
    return body


def http_event(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """API Gateway's payload 2.0 event for ``POST /v1/messages`` with a bearer key."""
    from relay_local.apigw import to_event
    from relay_local.stack import DEV_API_KEY

    sent = {
        "Authorization": f"Bearer {DEV_API_KEY}",
        "Content-Type": "application/json",
        "Host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        **(headers or {}),
    }
    raw = json.dumps(body).encode()
    sent["Content-Length"] = str(len(raw))
    return to_event("POST", "/v1/messages", sent, raw, "POST /v1/messages")


def sqs_event(bodies: Iterable[Mapping[str, Any]], receive_count: int = 1) -> dict[str, Any]:
    """An SQS event (as the event source mapping builds it), one record per body."""
    from relay_local.esm import event_record

    arn = "arn:aws:sqs:us-east-1:123456789012:webhook-relay-bench-delivery"
    records = []
    for body in bodies:
        message_id = str(uuid.uuid4())
        received: Any = {
            "MessageId": message_id,
            "ReceiptHandle": f"bench-{message_id}",
            "Body": json.dumps(body),
            "Attributes": {
                "ApproximateReceiveCount": str(receive_count),
                "SentTimestamp": str(int(time.time() * 1000)),
            },
        }
        records.append(event_record(received, arn))
    return {"Records": records}


def load_handler(function: str) -> Any:
    """Import ``functions/<function>/app.py`` afresh in this process (``apply`` first)."""
    from relay_local.lambda_runtime import load_function

    return load_function(function)


def lambda_context(timeout_s: float = 60.0) -> Any:
    from relay_local.lambda_runtime import LambdaContext

    return LambdaContext(timeout_s=timeout_s)


# --- child processes --------------------------------------------------------------------------


def run_child(
    handler: Path,
    env: Mapping[str, str],
    events: Sequence[Mapping[str, Any]],
    *,
    mode: str = "run",
    warmup: int = 0,
    tracing: bool = True,
    timeout_s: float = 60.0,
    prelude: str = "",
    limit_s: float = 300.0,
    wrapper: Sequence[str] = (),
    python: Sequence[str] = PYTHON,
) -> dict[str, Any]:
    """Run ``handler`` on ``events`` in a fresh interpreter (benchmarks/_child.py).

    ``mode="cold"``: phases of the first invocation (``prelude``, the handler's own import
    statements, first; then the module, whose body is then only its init; then ``events[0]``).
    ``mode="run"``: ``warmup`` events untimed, the rest timed. ``wrapper`` goes before the
    interpreter (valgrind); its stderr tail is kept as ``wrapper_stderr``. ``python``: the
    interpreter's command line (``BenchStack.python``). Returns the child's
    JSON plus ``spawned_at`` and ``spawn_to_answer_s`` (the parent's clock, from just before
    exec to the answer arriving). perf_counter is CLOCK_MONOTONIC, shared by processes.
    """
    spec = {
        "mode": mode,
        "handler": str(handler),
        "prelude": prelude,
        "events": list(events),
        "warmup": warmup,
        "tracing": tracing,
        "timeout_s": timeout_s,
    }
    read_fd, write_fd = os.pipe()
    with (
        tempfile.NamedTemporaryFile("w", suffix=".json") as spec_file,
        tempfile.TemporaryFile() as err,
    ):
        json.dump(spec, spec_file)
        spec_file.flush()
        spawned_at = time.perf_counter()
        child = subprocess.Popen(
            [*LAUNCH, *wrapper, *python, str(CHILD), str(write_fd), spec_file.name],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the handlers' logs and EMF metrics
            stderr=err,
            pass_fds=(write_fd,),
            start_new_session=True,  # its own process group, to end it and its shell together
        )
        os.close(write_fd)
        try:
            line, answered_at = _read_line(read_fd, child, limit_s)
            child.wait(timeout=limit_s)
        finally:
            os.close(read_fd)
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
        if not line:
            raise RuntimeError(f"{handler} exited {child.returncode} without an answer:\n{tail}")
    result: dict[str, Any] = json.loads(line)
    if wrapper:
        result["wrapper_stderr"] = tail  # what the wrapper (valgrind) reported at exit
    result["spawned_at"] = spawned_at
    result["spawn_to_answer_s"] = answered_at - spawned_at
    return result


def import_statements(handler: Path) -> str:
    """The top-level import statements of ``handler`` (not ``__future__``, not TYPE_CHECKING),
    as source: run first, they split a cold start into imports and the module's own init."""
    source = handler.read_text()
    tree = ast.parse(source)
    lines = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            lines.append(ast.get_source_segment(source, node) or "")
    return "\n".join(lines)


def _read_line(fd: int, child: subprocess.Popen[bytes], limit_s: float) -> tuple[bytes, float]:
    data = b""
    deadline = time.monotonic() + limit_s
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"no answer from child {child.pid} in {limit_s} s")
        chunk = os.read(fd, 65536)
        if not chunk:  # EOF: the child exited
            break
        data += chunk
    return data.split(b"\n", 1)[0], time.perf_counter()


# --- results ----------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and p90 (nearest rank) of ``values``, with min, max and n."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    rank = max(0, min(len(ordered) - 1, round(0.9 * len(ordered) + 0.5) - 1))
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[rank],
        "min": ordered[0],
        "max": ordered[-1],
    }


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def git_revision() -> dict[str, Any]:
    """The commit measured (HEAD of RELAY_ROOT's checkout, and of the benchmarks' when that is
    another) and whether its work tree had changes (``git status --porcelain``, untracked files
    included): a dirty result measured code that no commit holds."""

    found = revision(RELAY_ROOT)
    if RELAY_ROOT != REPO:
        bench = revision(REPO)
        found |= {"bench_commit": bench["commit"], "bench_dirty": bench["dirty"]}
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on: kernel, CPU model and count, memory."""

    def proc(path: str, field: str) -> str | None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return None
        found = (line.split(":", 1)[1].strip() for line in lines if line.startswith(field))
        return next(found, None)

    memory = proc("/proc/meminfo", "MemTotal")  # "24576000 kB"
    return {
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": proc("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
    }


def write_result(
    path: str | Path, data: Mapping[str, Any], python: Mapping[str, str] | None = None
) -> Path:
    """Write ``data`` as JSON (with the machine's basics) and return the path. ``python``: the
    children's interpreter (``BenchStack.interpreter``), when it may not be this one's."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **git_revision(),
        "python": sys.version.split()[0],
        **({"child_python": dict(python)} if python is not None else {}),
        "platform": sys.platform,
        "cpus": os.cpu_count(),
        "machine": machine(),
        "relay_root": str(RELAY_ROOT),
        "load_average": os.getloadavg(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.write_text(json.dumps({"meta": meta, **data}, indent=2, default=str) + "\n")
    return out
