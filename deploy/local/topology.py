"""The Kubernetes topology of deploy/kubernetes/ on one machine, with real processes on loopback.

    .venv/bin/python deploy/local/topology.py up --run-dir /tmp/imgsim-topology --model efficientnet_lite0-embed
    .venv/bin/python client/rank.py --url "$(cat /tmp/imgsim-topology/url)" --model efficientnet_lite0-embed \\
        --token-file /tmp/imgsim-topology/shared.key
    .venv/bin/python deploy/local/topology.py add --run-dir /tmp/imgsim-topology      # one more replica
    .venv/bin/python deploy/local/topology.py status --run-dir /tmp/imgsim-topology   # JSON
    .venv/bin/python deploy/local/topology.py down --run-dir /tmp/imgsim-topology

Each replica is what a pod is: TorchServe (``serve.sh --foreground``, as in the container) on
free loopback ports, and its edge, nginx run by deploy/edge/start-edge.sh, which checks the
shared key and forwards with that TorchServe's own key (``serve.sh --edge-key`` hands it over).
In front, an nginx load balancer (deploy/local/balancer.conf.template) stands for the Service,
and a supervisor stands for Kubernetes' readiness probes and endpoints: every second it runs the
readiness check (``client.readiness``, the pods' probe) against each replica and keeps only those
that pass in the balancer's upstream, reloading nginx when that set changes. A replica that is
not ready, never was, or died gets no traffic; the balancer also resends a request whose replica
failed mid-way to another one.

Everything lives in --run-dir: shared.key (made unless --shared-key-file names one), url, state.json
(the supervisor's view), balancer/, and replicas/N/ with each replica's TorchServe folder, edge
prefix, logs and replica.json (ports and process ids: each process leads its own process group).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the checkout is the import root
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import requests  # noqa: E402

from client.readiness import NotReady, check, probe_image  # noqa: E402
from devtools import REPO  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from devtools.torchserve import Ports, serve_command, server_env  # noqa: E402

EDGE = REPO / "deploy" / "edge"
BALANCER_TEMPLATE = Path(__file__).resolve().parent / "balancer.conf.template"
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 10.0
FAILURE_THRESHOLD = 3  # failed checks in a row before a ready replica leaves the balancer (a probe's failureThreshold)
# Debian installs nginx in /usr/sbin, which a user's PATH may lack
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin:/sbin")
NO_REPLICA = "server 127.0.0.1:9 down;  # none ready: nginx needs one server, this one is never used\n"


@dataclass
class Replica:
    index: int
    model_store: str
    models: list[str]
    ports: dict[str, int]
    edge_port: int
    torchserve_pid: int = 0
    edge_pid: int = 0

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"


def say(message: str) -> None:
    print(f"topology.py: {message}", file=sys.stderr, flush=True)


def replica_dir(run: Path, index: int) -> Path:
    return run / "replicas" / str(index)


def load_replicas(run: Path) -> list[Replica]:
    replicas = []
    for file in sorted((run / "replicas").glob("*/replica.json"), key=lambda f: int(f.parent.name)):
        try:
            replicas.append(Replica(**json.loads(file.read_text())))
        except (OSError, ValueError, TypeError):
            pass  # being written
    return replicas


def write_json(path: Path, document: dict) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def nginx_user() -> str:
    """Started by root, nginx hands its workers to `nobody`, who cannot reach a private run folder."""
    return "user root root;" if os.geteuid() == 0 else ""


# --- starting and stopping ------------------------------------------------------------------------


def start_balancer(run: Path, port: int) -> int:
    prefix = run / "balancer"
    for sub in ("conf", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    config = BALANCER_TEMPLATE.read_text().replace("${LISTEN}", f"127.0.0.1:{port}")
    (prefix / "conf" / "nginx.conf").write_text(config)
    (prefix / "conf" / "upstreams.conf").write_text(NO_REPLICA)
    with open(run / "balancer.out", "ab") as out:
        process = subprocess.Popen(
            [NGINX, "-e", "stderr", "-p", f"{prefix}/", "-c", "conf/nginx.conf", "-g", f"daemon off; {nginx_user()}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    return process.pid


def start_replica(run: Path, index: int, model_store: Path, models: list[str]) -> Replica:
    folder = replica_dir(run, index)
    workdir = folder / "torchserve"
    workdir.mkdir(parents=True, exist_ok=True)
    (folder / "edge").mkdir(exist_ok=True)
    ports = Ports.free()
    replica = Replica(index, str(model_store), models, asdict(ports), free_port())
    key = folder / "edge" / "inference.key"
    command = serve_command(model_store, tuple(models), ports) + ["--foreground", "--edge-key", str(key)]
    with open(folder / "torchserve.out", "ab") as out:
        replica.torchserve_pid = subprocess.Popen(
            command, cwd=workdir, env=server_env(workdir), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        ).pid  # fmt: skip
    edge_env = {
        **os.environ,
        "IMGSIM_SHARED_KEY_FILE": str(run / "shared.key"),
        "IMGSIM_BACKEND_KEY_FILE": str(key),
        "IMGSIM_TORCHSERVE": f"127.0.0.1:{ports.inference}",
        "IMGSIM_EDGE_LISTEN": f"127.0.0.1:{replica.edge_port}",
        "IMGSIM_EDGE_PREFIX": str(folder / "edge" / "nginx"),
        "NGINX": NGINX,
    }
    with open(folder / "edge.out", "ab") as out:
        replica.edge_pid = subprocess.Popen(
            [str(EDGE / "start-edge.sh")], env=edge_env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        ).pid  # fmt: skip
    write_json(folder / "replica.json", asdict(replica))
    say(f"replica {index}: TorchServe pid {replica.torchserve_pid}, edge {replica.edge_url} pid {replica.edge_pid}")
    return replica


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own child, not yet reaped) is gone for every purpose here
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_groups(pgids: list[int], grace_s: float = 30.0) -> None:
    """TERM to each process group, KILL to what is left after ``grace_s``."""
    pgids = [pgid for pgid in pgids if pgid]
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(group_alive(pgid) for pgid in pgids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pgid in pgids:
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)


def stop_replica(replica: Replica) -> None:
    stop_groups([replica.edge_pid, replica.torchserve_pid])


# --- the supervisor: readiness probes and the balancer's endpoints -----------------------------


def probe(replica: Replica, run: Path) -> tuple[bool, str]:
    try:
        verdicts = check(replica_dir(run, replica.index) / "torchserve", replica.models, PROBE_TIMEOUT_S)
    except NotReady as error:
        return False, str(error)
    except Exception as error:  # noqa: BLE001  an answer the check cannot read is "not ready", never a dead supervisor
        return False, f"{type(error).__name__}: {error}"
    failing = [f"{v.model}: {v.reason}" for v in verdicts if not v.ready]
    return (not failing), "; ".join(failing) or "ready"


def upstreams(replicas: list[Replica]) -> str:
    lines = [f"server 127.0.0.1:{r.edge_port} max_fails=1 fail_timeout=10s;  # replica {r.index}\n" for r in replicas]
    return "".join(lines) or NO_REPLICA


def supervise(run: Path) -> int:
    state = json.loads((run / "state.json").read_text())
    state["supervisor_pid"] = os.getpid()
    balancer_pid = state["balancer"]["pid"]
    serving: set[int] = set()
    failures: dict[int, int] = {}
    with ThreadPoolExecutor(8) as pool:
        while alive(balancer_pid):
            replicas = load_replicas(run)
            results = dict(zip((r.index for r in replicas), pool.map(lambda r: probe(r, run), replicas)))
            for replica in replicas:
                ready, _ = results[replica.index]
                failures[replica.index] = 0 if ready else failures.get(replica.index, 0) + 1
            wanted = {
                r.index for r in replicas
                if results[r.index][0] or (r.index in serving and failures[r.index] < FAILURE_THRESHOLD)
            }  # fmt: skip
            if wanted != serving:
                (run / "balancer" / "conf" / "upstreams.conf").write_text(
                    upstreams([r for r in replicas if r.index in wanted])
                )
                os.kill(balancer_pid, signal.SIGHUP)
                joined, left = sorted(wanted - serving), sorted(serving - wanted)
                say(f"balancer now sends to replicas {sorted(wanted) or 'none'} (joined {joined}, left {left})")
                serving = wanted
            state["replicas"] = [
                {**asdict(r), "edge_url": r.edge_url, "ready": results[r.index][0], "reason": results[r.index][1],
                 "in_balancer": r.index in serving}
                for r in replicas
            ]  # fmt: skip
            state["checked_at"] = time.time()
            write_json(run / "state.json", state)
            time.sleep(PROBE_EVERY_S)
    return 0


# --- commands ---------------------------------------------------------------------------------------


def read_state(run: Path) -> dict:
    try:
        return json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"topology.py: no topology in {run} (state.json missing); start one with: up --run-dir {run}")


def wait_in_balancer(run: Path, indices: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = read_state(run)
        if indices <= {r["index"] for r in state.get("replicas", []) if r["in_balancer"]}:
            return True
        if state["supervisor_pid"] and not alive(state["supervisor_pid"]):
            say(f"the supervisor has stopped; see {run / 'supervisor.log'}")
            return False
        time.sleep(0.5)
    return False


def explain_not_ready(run: Path, indices: set[int]) -> None:
    for replica in read_state(run).get("replicas", []):
        if replica["index"] in indices and not replica["in_balancer"]:
            folder = replica_dir(run, replica["index"])
            say(f"replica {replica['index']} is not ready: {replica['reason']} "
                f"(logs: {folder / 'torchserve' / 'logs' / 'model_log.log'}, {folder / 'edge.out'})")  # fmt: skip


def answers_through_balancer(run: Path, model: str, seconds: float = 30.0) -> bool:
    """One image through the balancer with the shared key: what the user gets is what was started."""
    state = read_state(run)
    headers = {"Authorization": f"Bearer {(run / 'shared.key').read_text().strip()}", "Content-Type": "image/png"}
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = requests.post(f"{state['url']}/predictions/{model}", data=probe_image(), headers=headers,
                                     timeout=30)  # fmt: skip
            if response.status_code == 200:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def command_up(args: argparse.Namespace) -> int:
    run: Path = args.run_dir.resolve()
    if (run / "state.json").exists() and alive(read_state(run)["balancer"]["pid"]):
        raise SystemExit(f"topology.py: a topology already runs in {run}; stop it first: down --run-dir {run}")
    run.mkdir(parents=True, exist_ok=True)
    key = run / "shared.key"
    shared = args.shared_key_file.read_text().strip() if args.shared_key_file else secrets.token_urlsafe(32)
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{32,}", shared):  # what start-edge.sh accepts
        raise SystemExit(f"topology.py: {args.shared_key_file} must hold one key of at least 32 characters "
                         "from A-Z a-z 0-9 - . _ ~ + / = (make one: openssl rand -base64 32)")  # fmt: skip
    key.touch(mode=0o600)
    key.write_text(shared + "\n")
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    balancer_pid = start_balancer(run, port)
    write_json(run / "state.json", {"url": url, "balancer": {"pid": balancer_pid, "port": port}, "replicas": [],
                                    "supervisor_pid": 0})  # fmt: skip
    (run / "url").write_text(url + "\n")
    with open(run / "supervisor.log", "ab") as log:  # from here on only the supervisor writes state.json
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "supervise", "--run-dir", str(run)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    started = {start_replica(run, i, args.model_store.resolve(), args.model).index for i in range(1, args.replicas + 1)}
    if not wait_in_balancer(run, started, args.wait) or not answers_through_balancer(run, args.model[0]):
        explain_not_ready(run, started)
        say(f"not every replica was ready within {args.wait:.0f} s; the topology keeps running "
            f"(down --run-dir {run} stops it)")  # fmt: skip
        return 1
    say(f"{url} balances {len(started)} replicas; clients send the key in {key}; stop: down --run-dir {run}")
    print(url)
    return 0


def command_add(args: argparse.Namespace) -> int:
    run: Path = args.run_dir.resolve()
    state = read_state(run)
    existing = load_replicas(run)
    models = args.model or (existing[0].models if existing else None)
    store = args.model_store or (Path(existing[0].model_store) if existing else None)
    if not models or not store:
        raise SystemExit("topology.py: add needs --model and --model-store (no replica to copy them from)")
    index = max((r.index for r in existing), default=0) + 1
    while replica_dir(run, index).exists():  # a removed replica's folder keeps its logs
        index += 1
    start_replica(run, index, store.resolve(), models)
    if args.wait <= 0:
        say(f"replica {index} joins the balancer at {state['url']} once its readiness check passes")
        return 0
    if not wait_in_balancer(run, {index}, args.wait):
        explain_not_ready(run, {index})
        say(f"replica {index} keeps running and joins the balancer once ready (remove --replica {index} stops it)")
        return 1
    say(f"replica {index} is in the balancer")
    return 0


def command_remove(args: argparse.Namespace) -> int:
    run: Path = args.run_dir.resolve()
    replicas = {r.index: r for r in load_replicas(run)}
    if args.replica not in replicas:
        raise SystemExit(f"topology.py: no replica {args.replica} in {run} (there are {sorted(replicas)})")
    (replica_dir(run, args.replica) / "replica.json").unlink()  # the supervisor takes it out of the balancer
    time.sleep(2 * PROBE_EVERY_S)
    stop_replica(replicas[args.replica])
    say(f"replica {args.replica} stopped")
    return 0


def command_status(args: argparse.Namespace) -> int:
    print(json.dumps(read_state(args.run_dir.resolve()), indent=2))
    return 0


def command_down(args: argparse.Namespace) -> int:
    run: Path = args.run_dir.resolve()
    state = read_state(run)
    stop_groups([state.get("supervisor_pid", 0)], grace_s=5)
    replicas = load_replicas(run)
    stop_groups([pid for r in replicas for pid in (r.edge_pid, r.torchserve_pid)] + [state["balancer"]["pid"]])
    say(f"stopped the balancer and {len(replicas)} replicas in {run}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="topology.py", description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the balancer, its supervisor and the replicas; wait until they serve")
    add = commands.add_parser("add", help="start one more replica; it joins the balancer once ready")
    remove = commands.add_parser("remove", help="take a replica out of the balancer, then stop it")
    status = commands.add_parser("status", help="the supervisor's view, as JSON")
    down = commands.add_parser("down", help="stop everything")
    supervise_ = commands.add_parser("supervise", help="(run by up) the readiness checks behind the balancer")
    for command in (up, add, remove, status, down, supervise_):
        command.add_argument("--run-dir", type=Path, required=True, help="the topology's folder")
    up.add_argument("--model", action="append", required=True, help="model to serve (may be repeated)")
    up.add_argument("--model-store", type=Path, default=REPO / "model_store", help="default: model_store/")
    up.add_argument("--replicas", type=int, default=2, help="default 2")
    up.add_argument("--port", type=int, help="the balancer's port on 127.0.0.1 (default: a free one)")
    up.add_argument("--shared-key-file", type=Path, help="a file holding the shared key (default: a new random one)")
    add.add_argument("--model", action="append", help="default: the first replica's")
    add.add_argument("--model-store", type=Path, help="default: the first replica's")
    remove.add_argument("--replica", type=int, required=True, help="its number (status lists them)")
    for command in (up, add):
        command.add_argument("--wait", type=float, default=300, help="seconds to wait until ready (add: 0 = none)")
    args = parser.parse_args(argv)
    if args.command in ("up", "add") and NGINX is None:
        raise SystemExit("topology.py: nginx is not installed: apt-get install nginx (make setup does)")
    handlers = {"up": command_up, "add": command_add, "remove": command_remove, "status": command_status,
                "down": command_down, "supervise": lambda a: supervise(a.run_dir.resolve())}  # fmt: skip
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
