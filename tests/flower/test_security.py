"""The local deployment is secure by default: TLS on the SuperLink, and only the deployment's registered
SuperNode keys may connect; `flower run` stops what it started when it is killed with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sfedlora.flower import credentials, deploy

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


def _rogue(state, port, args, log):
    return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "flower-supernode"), *args,
                             "--superlink", f"127.0.0.1:{port}", "--port", str(port + 20), "--max-wait-time", "8",
                             "--node-config", "partition-id=1 num-partitions=2"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=deploy.flower_env(state),
                            start_new_session=True)


def _online_nodes(state) -> int:
    flwr = os.path.join(os.path.dirname(sys.executable), "flwr")
    done = subprocess.run([flwr, "supernode", "list", deploy.CONNECTION, "--format", "json"],
                          env=deploy.flower_env(state), capture_output=True, text=True, timeout=60)
    nodes = json.loads(done.stdout[done.stdout.index("{"):])["nodes"]
    return sum(1 for n in nodes if n.get("status") == "online")


@pytest.mark.slow
def test_only_registered_nodes_connect_over_tls(tmp_path):
    state = tmp_path / "deploy"
    procs = deploy.up(1, state, port=39760)
    assert procs["secure"] and oct((state / "credentials" / "supernode-0").stat().st_mode & 0o777) == "0o600"
    other = credentials.make(tmp_path / "other", 1)  # a key pair the deployment never registered
    wrong_key = ["--root-certificates", str(state / "credentials" / "ca.crt"), "--auth-supernode-private-key",
                 str(other.node_keys[0])]
    rogues = [_rogue(state, 39760, wrong_key, tmp_path / "wrong-key.log"),
              _rogue(state, 39761, ["--insecure"], tmp_path / "plaintext.log")]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _online_nodes(state) < 1:
            time.sleep(1)
        for r in rogues:
            r.wait(timeout=90)  # they give up: neither ever connects
        assert _online_nodes(state) == 1  # the deployment's own SuperNode, nothing else
    finally:
        for r in rogues:
            if r.poll() is None:
                os.killpg(r.pid, signal.SIGKILL)
                r.wait(timeout=30)
        deploy.down(state)
    assert "insecure = true" not in (state / "flwr-home" / "config.toml").read_text()


@pytest.mark.slow
def test_flower_run_stops_its_processes_when_terminated(sentiment_file, tmp_path):
    state = tmp_path / "deploy"
    cmd = [sys.executable, "-m", "sfedlora.cli", "flower", "run", f"data.source={sentiment_file}",
           "model.name=tiny-bert", "data.task=classification", "data.text_field=sentence",
           "data.label_field=sentiment", "fed.clients=2", "fed.rounds=50", "--state", str(state), "--port", "39780",
           "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(pids) < 3:
            if (state / "processes.json").exists():
                try:
                    pids = json.loads((state / "processes.json").read_text())["pids"]
                except ValueError:
                    pass
            time.sleep(0.5)
        assert len(pids) == 3, "the deployment did not start"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        time.sleep(1)
        left = [name for name, pid in pids.items() if deploy._alive(pid)]
        recorded = (state / "processes.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        deploy.down(state)  # whatever is left (nothing, if the test passes)
    assert proc.returncode == 130 and not left and not recorded
