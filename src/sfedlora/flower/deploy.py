"""A local Flower deployment on 127.0.0.1: one SuperLink and one SuperNode per client, started as
processes of their own (each in its own session, so stopping one stops what it spawned), their PIDs
kept in <state-dir>/processes.json, stopped by those PIDs only. Every wait is bounded.

Secure by default: TLS on every SuperLink connection (a fresh self-signed CA and a certificate for
127.0.0.1, flower.credentials) and CLI-managed SuperNode authentication (each SuperNode's public key is
registered before it starts; a SuperNode with any other key is refused). `insecure=True` starts it the
old way (no TLS, any SuperNode may connect), only when asked, with a warning.

  up      start the SuperLink and n SuperNodes (partition-id=i num-partitions=n, node-dir=<state>/node-i)
  submit  `flwr run` the packaged sfedlora Flower App on it, then wait for the run folder's outcome
          (summary.json or error.txt: `flwr run` returns 0 even when the ServerApp fails)
  down    stop the processes listed in processes.json
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sfedlora.errors import SfedloraError
from sfedlora.flower import credentials

CONNECTION = "sfedlora-local"
DEFAULT_PORT = 39500


def flower_env(state_dir: Path, threads: int | None = None) -> dict[str, str]:
    """Environment for Flower's processes: this interpreter's scripts first on PATH (Flower starts
    flower-superexec, flwr-serverapp and flwr-clientapp by name), no telemetry, no runtime installs,
    and a Flower home of our own so the user's ~/.flwr is never touched."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(state_dir / "flwr-home"),
                "PYTHONUNBUFFERED": "1"})
    if threads:
        env["SFEDLORA_NODE_THREADS"] = str(threads)
    return env


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SfedloraError(f"the SuperLink exited with code {proc.returncode}; see {log}")
        if _port_open(port):
            return
        time.sleep(0.2)
    raise SfedloraError(f"the SuperLink did not open 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _register(creds: Any, env: dict[str, str], state_dir: Path) -> None:
    """Register every SuperNode's public key with the SuperLink (through its TLS Control API)."""
    flwr = str(Path(sys.executable).parent / "flwr")
    for i, key in enumerate(creds.node_keys):
        done = subprocess.run([flwr, "supernode", "register", f"{key}.pub", CONNECTION, "--format", "json"], env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or '"success": true' not in done.stdout:
            output = (done.stdout + done.stderr).strip()[-800:]
            raise SfedloraError(f"registering SuperNode {i}'s key failed; see {state_dir}/superlink.log:\n{output}")


def up(nodes: int, state_dir: Path, port: int = DEFAULT_PORT, startup_timeout: float = 60.0,
       insecure: bool = False) -> dict[str, Any]:
    """Start the SuperLink and `nodes` SuperNodes (TLS and SuperNode authentication unless `insecure`);
    returns what processes.json records."""
    state_dir = Path(state_dir).resolve()
    if (state_dir / "processes.json").exists() and running(state_dir):
        raise SfedloraError(f"a local deployment is already running from {state_dir}: `sfedlora flower down` first")
    if nodes < 1:
        raise SfedloraError("a deployment needs at least one SuperNode")
    for p in [port] + [port + 1 + i for i in range(nodes)]:
        if _port_open(p):
            raise SfedloraError(f"port {p} on 127.0.0.1 is in use: pick another base port with --port")
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "flwr-home").mkdir(exist_ok=True)
    creds = None if insecure else credentials.make(state_dir / "credentials", nodes)
    trust = "insecure = true" if creds is None else f'root-certificates = "{creds.ca}"'
    (state_dir / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\n{trust}\n')
    env = flower_env(state_dir, threads=max(1, (os.cpu_count() or 1) // nodes))
    bin_dir = Path(sys.executable).parent
    procs: dict[str, Any] = {"port": port, "nodes": nodes, "pids": {}, "secure": creds is not None}
    link_log = state_dir / "superlink.log"
    security = ["--insecure"] if creds is None else [
        "--ssl-ca-certfile", str(creds.ca), "--ssl-certfile", str(creds.server_cert), "--ssl-keyfile",
        str(creds.server_key), "--enable-supernode-auth"]
    link = _spawn([str(bin_dir / "flower-superlink"), *security, "--host", "127.0.0.1", "--port", str(port),
                   "--disable-runtime-dependency-installation", "--database", str(state_dir / "state.db")],
                  link_log, env)
    procs["pids"]["superlink"] = link.pid
    _write(state_dir, procs)
    try:
        _wait_port(port, link, startup_timeout, link_log)
        if creds is not None:
            _register(creds, env, state_dir)
        for i in range(nodes):
            node_dir = state_dir / f"node-{i}"
            node_dir.mkdir(exist_ok=True)
            config = f"partition-id={i} num-partitions={nodes} node-dir='{node_dir}'"
            auth = ["--insecure"] if creds is None else ["--root-certificates", str(creds.ca),
                                                         "--auth-supernode-private-key", str(creds.node_keys[i])]
            node = _spawn([str(bin_dir / "flower-supernode"), *auth, "--superlink", f"127.0.0.1:{port}",
                           "--node-config", config, "--host", "127.0.0.1", "--port", str(port + 1 + i),
                           "--max-wait-time", str(int(startup_timeout))],
                          state_dir / f"supernode-{i}.log", env)
            procs["pids"][f"supernode-{i}"] = node.pid
            _write(state_dir, procs)
    except BaseException:
        down(state_dir)
        raise
    return procs


def _write(state_dir: Path, procs: dict[str, Any]) -> None:
    (state_dir / "processes.json").write_text(json.dumps(procs, indent=1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def running(state_dir: Path) -> dict[str, int]:
    """The recorded processes that are still alive."""
    path = Path(state_dir) / "processes.json"
    if not path.exists():
        return {}
    pids = json.loads(path.read_text())["pids"]
    return {name: pid for name, pid in pids.items() if _alive(pid)}


def down(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop the recorded processes (and what each spawned in its session): SIGTERM, then SIGKILL after
    `grace` seconds. Returns the names stopped."""
    alive = running(state_dir)
    for pid in alive.values():
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: the SuperLink/SuperNode and its app processes
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in alive.values()):
        time.sleep(0.2)
    for pid in alive.values():
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    path = Path(state_dir) / "processes.json"
    if path.exists():
        path.unlink()
    return sorted(alive)


def _show_rows(out: Path, shown: int, echo: Callable[[str], None]) -> int:
    """Echo the rounds the ServerApp has written since the last call (its own output goes to its log)."""
    from sfedlora.core.metrics import PRIMARY
    from sfedlora.runtime import records

    path = out / "metrics.jsonl"
    if not path.exists() or not (out / "config.yaml").exists():
        return shown
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    if len(lines) > shown:
        task = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["task"]
        metric, _ = PRIMARY[task]
        if shown == 0:
            echo(records.header(metric))
        for line in lines[shown:]:
            try:
                echo(records.row(json.loads(line), metric))
            except ValueError:  # a line being written
                return shown
        shown = len(lines)
    return shown


def submit(state_dir: Path, out: Path, config: str | None, overrides: list[str], settings: dict[str, Any],
           timeout: float, echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """`flwr run` the sfedlora App on the running deployment and wait (at most `timeout` seconds) for the
    run folder's outcome. Returns summary.json; raises with error.txt's text when the ServerApp failed."""
    import tomli_w

    state_dir, out = Path(state_dir).resolve(), Path(out).resolve()
    if not running(state_dir):
        raise SfedloraError(f"no local deployment is running from {state_dir}: `sfedlora flower up` first")
    for name in ("summary.json", "error.txt"):
        if (out / name).exists():
            (out / name).unlink()
    app_dir = state_dir / "app"
    if app_dir.exists():
        shutil.rmtree(app_dir)
    app_dir.mkdir()
    template = resources.files("sfedlora.flower") / "app" / "pyproject.toml"
    (app_dir / "pyproject.toml").write_bytes(template.read_bytes())
    run_config = {"config": str(Path(config).resolve()) if config and Path(config).exists() else (config or ""),
                  "overrides": shlex.join(overrides), "out": str(out), **settings}
    (state_dir / "run-config.toml").write_text(tomli_w.dumps(run_config))
    env = flower_env(state_dir)
    flwr = str(Path(sys.executable).parent / "flwr")
    done = subprocess.run([flwr, "run", str(app_dir), CONNECTION, "--run-config", str(state_dir / "run-config.toml"),
                           "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    try:
        started = json.loads(done.stdout[done.stdout.index("{"):]).get("success") is True
    except ValueError:
        started = False
    if done.returncode != 0 or not started:
        raise SfedloraError("flwr run did not start the run:\n" + (done.stdout + done.stderr).strip())
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        shown = _show_rows(out, shown, echo)
        if (out / "summary.json").exists():
            _show_rows(out, shown, echo)
            return json.loads((out / "summary.json").read_text())
        if (out / "error.txt").exists():
            raise SfedloraError("the ServerApp failed: " + (out / "error.txt").read_text().strip())
        if "superlink" not in running(state_dir):
            raise SfedloraError(f"the SuperLink stopped during the run; see {state_dir / 'superlink.log'}")
        time.sleep(1.0)
    raise SfedloraError(f"no result in {out} after {timeout:.0f} s; logs in {state_dir}")


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the block like Ctrl-C does (KeyboardInterrupt), so that the `finally` that
    stops the deployment runs when the command is killed (SIGKILL cannot be caught: `flower down` then
    stops what processes.json lists)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_local(nodes: int, state_dir: Path, out: Path, config: str | None, overrides: list[str],
              settings: dict[str, Any], timeout: float, port: int = DEFAULT_PORT,
              echo: Callable[[str], None] = lambda s: None, insecure: bool = False) -> dict[str, Any]:
    """up -> submit -> down, stopping every process it started whatever happens (an error, Ctrl-C, SIGTERM,
    SIGHUP)."""
    with stopped_by_signals():
        up(nodes, state_dir, port, insecure=insecure)  # stops what it started if it fails or is interrupted
        try:
            return submit(state_dir, out, config, overrides, settings, timeout, echo)
        finally:
            down(state_dir)
