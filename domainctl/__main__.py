"""``domainctl``: the command line of DomainOS.

Startup is kept short on purpose: this module imports only the standard library and the
exception tree; gRPC, YAML and the generated code are imported by the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from domainos.errors import DomainOSError

PROG = "domainctl"
#: ``domainctl master|subdomain|agent ARGS`` run the daemon module with the same arguments.
DAEMONS = {"master": "master_domain", "subdomain": "sub_domain", "agent": "node_agent"}

# command -> "module:function"; the module is imported only when its command runs.
_HANDLERS = {
    "domains": "domainctl._commands:cmd_domains",
    "nodes": "domainctl._commands:cmd_nodes",
    "cordon": "domainctl._commands:cmd_node_admin",
    "drain": "domainctl._commands:cmd_node_admin",
    "uncordon": "domainctl._commands:cmd_node_admin",
    "run": "domainctl._commands:cmd_run",
    "submit": "domainctl._commands:cmd_submit",
    "jobs": "domainctl._commands:cmd_jobs",
    "job": "domainctl._commands:cmd_job",
    "logs": "domainctl._commands:cmd_logs",
    "cancel": "domainctl._commands:cmd_cancel",
    "wait": "domainctl._commands:cmd_wait",
    "info": "domainctl._commands:cmd_info",
    "top": "domainctl._top:cmd_top",
    "up": "domainctl._local:cmd_up",
    "down": "domainctl._local:cmd_down",
    "status": "domainctl._local:cmd_status",
    "demo": "domainctl._demo:cmd_demo",
    "compose": "domainctl._local:cmd_compose",
    "certs": "domainctl._certs:cmd_certs",
    "login": "domainctl._auth_commands:cmd_login",
    "whoami": "domainctl._auth_commands:cmd_whoami",
    "tenant": "domainctl._auth_commands:cmd_tenant",
    "token": "domainctl._auth_commands:cmd_token",
    "audit": "domainctl._auth_commands:cmd_audit",
    "quota": "domainctl._sched_commands:cmd_quota",
    "explain": "domainctl._sched_commands:cmd_explain",
    "dataset": "domainctl._data_commands:cmd_dataset",
    "sim": "domainctl._sim_command:cmd_sim",
    "sim-subdomains": "domainctl._sim_subdomains:cmd_sim_subdomains",
}

_EPILOG = """\
examples:
  domainctl up --detach                     start a local federation (2 regions, 4 agents)
  domainctl domains                         regions, sub-domains, capacity
  domainctl top                             live view: totals, sub-domains, busiest nodes, running jobs
  domainctl run --replicas 2 --cpus 0.5 --wait -- python3 -c "print(42)"
  domainctl run --tp 8 --pp 2 --dp 4 --gpu-model H100 --model-params 7B --iteration-time 2s -- python3 train.py
  domainctl submit examples/train-llm.yaml  a training job from a file (see examples/)
  domainctl jobs --state running
  domainctl logs JOB_ID
  domainctl token create --tenant acme --ttl 30d   (admins; `domainctl login` to use a token)
  domainctl quota set --tenant acme --region east --gpus 64 --gpu-model H100   (admins)
  domainctl explain JOB_ID                  why a job is where it is, or why it waits
  domainctl logs -f JOB_ID                  follow a job's output as it is written
  domainctl dataset ls                      datasets stored on the nodes (see dsdk.Dataset)
  domainctl drain east-1/n3 --reason "bad DIMM"   move a node's tasks off (admins; then uncordon)
  domainctl sim --subdomain 127.0.0.1:7101 --nodes 1000 --profile h100x8 --insecure   simulated nodes
  domainctl sim-subdomains --master 127.0.0.1:7070 --subdomains 100 --nodes 10000 --insecure   simulated sub-domains
  domainctl down

The master is found from --master, then $DOMAINOS_MASTER, then the local federation
started by `domainctl up` ($DOMAINOS_HOME or ~/.domainos). Connections are mutual TLS: the
client certificate comes from --tls-ca/--tls-cert/--tls-key, $DOMAINOS_TLS_CA/_CERT/_KEY, the
local federation, or ~/.domainos/pki (`domainctl certs init`); --insecure for plaintext.
exit status: 0 ok, 1 error, 2 bad usage or invalid input, 3 master unreachable.
"""


def _common() -> argparse.ArgumentParser:
    """--master and -o on every command (SUPPRESS: a value given before the command survives)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "--master",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help="master address HOST:PORT (default: $DOMAINOS_MASTER, then the local federation)",
    )
    for flag, what in (
        ("ca", "the cluster CA certificate"),
        ("cert", "this client's certificate"),
        ("key", "its key"),
    ):
        g.add_argument(
            f"--tls-{flag}",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help=f"{what} (PEM; default: $DOMAINOS_TLS_{flag.upper()}, the local federation, ~/.domainos/pki)",
        )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=argparse.SUPPRESS,
        help="plaintext without certificates (only for a master run insecure; `up`: run the daemons so)",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=argparse.SUPPRESS,
        help="output format (default: table)",
    )
    return p


def _home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", metavar="DIR", help="DomainOS home (default: $DOMAINOS_HOME or ~/.domainos)")


def _add_identity_commands(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """login, whoami, tenant, token, audit (tenants, tokens and the audit log need an admin)."""
    p = add("login", "check a token with the master and keep it (0600) for later commands")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--token", metavar="TOKEN", help="the token (dos_...); default: read standard input")
    src.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    add("whoami", "who the master takes you for: role, tenant, token, certificate")

    p = add("tenant", "tenants (admins): tenant create NAME | tenant ls")
    tenants = p.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    c = tenants.add_parser("create", help="create a tenant", parents=[common])
    c.add_argument("name", metavar="NAME", help="1-63 lower-case letters, digits and '-'")
    c.add_argument("--label", action="append", default=[], metavar="K=V", help="a label (repeatable)")
    tenants.add_parser("ls", help="list tenants", parents=[common])

    p = add("token", "tokens (admins): token create | token ls | token revoke ID")
    tokens = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    c = tokens.add_parser("create", help="create a token; it is printed once", parents=[common])
    c.add_argument("--tenant", metavar="T", help="the tenant of a user token")
    c.add_argument("--role", choices=("user", "admin"), default="user", help="user (default) or admin")
    c.add_argument("--ttl", metavar="DURATION", help="lifetime, e.g. 30d, 12h, 90m (default: never expires)")
    c.add_argument("--description", default="", metavar="TEXT", help="what it is for")
    c = tokens.add_parser("ls", help="list tokens (never their secrets)", parents=[common])
    c.add_argument("--tenant", metavar="T", help="only this tenant's tokens")
    c.add_argument("--all", action="store_true", help="include revoked tokens")
    c = tokens.add_parser("revoke", help="revoke a token: it stops working at once", parents=[common])
    c.add_argument("token_id", metavar="ID", help="the token id (12 hex digits) shown by `token ls`")

    p = add("audit", "the audit log of mutating calls, newest first (admins)")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries (default 100)")
    p.add_argument("--since", metavar="DURATION", help="only the last DURATION, e.g. 1h, 30m, 7d")


def _add_scheduling_commands(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """quota (set/rm: admins; ls: admins, or a user for its own tenant) and explain."""
    p = add("quota", "tenant quotas per region and sub-domain: quota set | quota ls | quota rm")
    quotas = p.add_subparsers(dest="quota_command", metavar="ACTION", required=True)

    def scope(c: argparse.ArgumentParser, *, required: bool) -> None:
        c.add_argument("--tenant", required=required, metavar="T", help="the tenant")
        c.add_argument("--region", default="*", metavar="R", help="the region (default *: every region)")
        c.add_argument(
            "--subdomain", default="*", metavar="S", help="the sub-domain (default *: every sub-domain)"
        )

    c = quotas.add_parser(
        "set",
        parents=[common],
        help="set a tenant's limits in a scope (admins); replaces that scope's limits",
        description="Set a tenant's quota in a region / sub-domain (admins). A job over quota waits, "
        "with the reason shown by `domainctl job` and `domainctl explain`; it never runs.",
    )
    scope(c, required=True)
    c.add_argument("--cpus", metavar="N", help="CPU cores (e.g. 64, 0.5, 500m)")
    c.add_argument("--memory", metavar="SIZE", help="memory (e.g. 512Gi)")
    c.add_argument("--gpus", metavar="N", help="whole GPUs (of --gpu-model; default any model)")
    c.add_argument("--gpu-model", metavar="MODEL", help="the GPU model --gpus counts (class gpu:MODEL)")
    c.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="CLASS=AMOUNT",
        help="any resource class in its unit: cpu (millicores), memory (bytes), gpu:MODEL, gpu:* (repeatable)",
    )
    c = quotas.add_parser("ls", parents=[common], help="quotas with usage (users: their own tenant's)")
    c.add_argument("--tenant", metavar="T", help="only this tenant's quotas")
    c = quotas.add_parser("rm", parents=[common], help="remove a tenant's quota in a scope (admins)")
    scope(c, required=True)

    p = add("explain", "why a job is where it is, or why it waits: quota, power, capacity, priority")
    p.add_argument("job_id", metavar="ID")

    p = add("dataset", "datasets stored on the nodes: dataset ls | dataset show NAME | dataset rm NAME")
    datasets = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    c = datasets.add_parser("ls", parents=[common], help="datasets of your tenant (admins: all, or --tenant)")
    c.add_argument("--tenant", metavar="T", help="only this tenant's (admins)")
    c = datasets.add_parser(
        "show", parents=[common], help="a dataset's shards and the nodes holding each copy"
    )
    c.add_argument("name", metavar="NAME")
    c = datasets.add_parser(
        "rm", parents=[common], help="remove a dataset's copies from the nodes and its record"
    )
    c.add_argument("name", metavar="NAME")
    c.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="wait this long for the nodes (default 60)"
    )


def _add_scheduling_run_flags(p: argparse.ArgumentParser) -> None:
    """``run``: gangs, training jobs and data locality (the fields of :mod:`domainos.jobspec`)."""
    g = p.add_argument_group("gangs and training jobs")
    g.add_argument(
        "--gang",
        metavar="MIN",
        nargs="?",
        const="all",
        help="all or nothing: place the first MIN tasks together (default: all of them)",
    )
    g.add_argument(
        "--gang-timeout", metavar="DURATION", help="give up one reservation attempt after this (e.g. 90s, 5m)"
    )
    for flag, what in (
        ("tp", "tensor parallel: GPUs per task, on one NVLink domain"),
        ("pp", "pipeline stages"),
        ("dp", "data-parallel replicas"),
    ):
        g.add_argument(f"--{flag}", metavar="N", help=f"{what} (a training job: pp*dp tasks of tp GPUs)")
    g.add_argument("--model-params", metavar="N", help="model parameters (e.g. 7B, 70e9)")
    g.add_argument("--bytes-per-param", metavar="N", help="bytes per gradient parameter (default 2: bf16)")
    g.add_argument("--iteration-time", metavar="DURATION", help="compute time of one iteration (e.g. 2s)")
    g.add_argument(
        "--max-cross-domain-loss",
        metavar="X",
        help="share of an iteration it may lose to spanning sub-domains, 0 <= X < 1 (default 0.02)",
    )
    g = p.add_argument_group("data locality")
    g.add_argument("--dataset", metavar="NAME", help="prefer nodes holding the task's shard of NAME")
    g.add_argument(
        "--shards", metavar="LIST", help="the tasks' shards, e.g. 0-7 or 0,2,4 (default: task i, shard i)"
    )
    g.add_argument(
        "--locality-wait", metavar="DURATION", help="wait this long for such a node (default 30s, at most 1h)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render ``--help``)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Control a DomainOS federation: jobs, domains, nodes, and a local federation.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, *, parents: bool = True) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, parents=[common] if parents else []
        )

    add("domains", "regions and their sub-domains: connection, nodes, capacity, free resources")
    p = add("nodes", "nodes with state, capacity, usage and tasks")
    p.add_argument("--subdomain", metavar="ID", help="only the nodes of this sub-domain")
    for name, text in (
        ("cordon", "no new tasks on a node; running ones keep running (admins)"),
        ("drain", "cordon a node and move its tasks off: queued again elsewhere, no retry spent (admins)"),
        ("uncordon", "put a cordoned node back in service (admins)"),
    ):
        p = add(name, text)
        p.add_argument("node", metavar="NODE", help="node id, or SUB-DOMAIN/NODE")
        p.add_argument("--subdomain", metavar="ID", help="the node's sub-domain (default: ask every one)")
        p.add_argument("--reason", default="", help="why (kept with the node and in the audit log)")
        if name == "drain":
            p.add_argument(
                "--grace",
                metavar="DURATION",
                help="SIGTERM -> SIGKILL grace of each task (e.g. 30s; default: the sub-domain's drain_grace_s)",
            )

    p = add("run", "run a command as a job: domainctl run [options] -- CMD ARGS...")
    p.add_argument("--name", help="job name")
    p.add_argument("--cpus", metavar="N", help="CPUs per task (e.g. 2, 0.5, 500m; default 1)")
    p.add_argument(
        "--gpus", metavar="N", help="GPUs per task: whole GPUs, or a share of one below 1 in 1%% steps (0.25)"
    )
    p.add_argument(
        "--gpu-memory", metavar="SIZE", help="with a fractional --gpus: the card memory the share may use"
    )
    p.add_argument("--gpu-model", metavar="MODEL", help="required GPU model")
    p.add_argument(
        "--exclude-gpu-model",
        metavar="MODEL",
        action="append",
        default=[],
        help="never on this GPU model (repeatable, or MODEL,MODEL)",
    )
    p.add_argument(
        "--node-selector",
        metavar="K=V",
        action="append",
        default=[],
        help="only on nodes with this label (repeatable)",
    )
    p.add_argument(
        "--mem", "--memory", dest="mem", metavar="SIZE", help="memory per task (e.g. 512Mi; default 256Mi)"
    )
    p.add_argument("--replicas", metavar="N", help="number of tasks (default 1)")
    p.add_argument(
        "--env", metavar="K=V", action="append", default=[], help="environment variable (repeatable)"
    )
    p.add_argument("--retries", metavar="N", help="retries of a task that exits non-zero (default 0)")
    p.add_argument(
        "--priority", metavar="CLASS", help="priority class: low | normal (default) | high | system"
    )
    _add_scheduling_run_flags(p)
    p.add_argument("--wait", action="store_true", help="wait for the job, print its state and output")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD ARGS", help="the program and its arguments")

    p = add("submit", "submit a job file (YAML; - for standard input)")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument(
        "--priority",
        metavar="CLASS",
        help="priority class, replacing the file's: low | normal | high | system",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job, print its state and output")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds")

    p = add("jobs", "list jobs, newest first")
    p.add_argument(
        "--state", action="append", default=[], metavar="S", help="only jobs in state S (repeatable, or a,b)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N jobs")

    p = add("job", "one job and its tasks")
    p.add_argument("job_id", metavar="ID")

    p = add("logs", "the output of a job's tasks")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--task", type=int, metavar="N", help="only task N")
    p.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing output as it is written, until the job ends",
    )

    p = add("cancel", "cancel a job")
    p.add_argument("job_id", metavar="ID")

    p = add("wait", "wait until a job finishes (exit 0 if it succeeded, 1 otherwise)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")

    add("info", "the master's identity, store and federation-wide counts")
    p = add(
        "top", "a live view of the federation: totals, sub-domains, busiest nodes, running jobs (q quits)"
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes (default 2)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    p.add_argument(
        "--no-color", action="store_true", help="no colours (also $NO_COLOR; none when not a terminal)"
    )
    p.add_argument(
        "--nodes", type=int, default=10, metavar="N", help="busiest nodes shown (default 10; 0: fetch none)"
    )
    p.add_argument("--jobs", type=int, default=10, metavar="N", help="running jobs shown (default 10)")
    p.add_argument(
        "--subdomains", type=int, default=20, metavar="N", help="sub-domain rows at most (default 20)"
    )
    _add_identity_commands(add, common)
    _add_scheduling_commands(add, common)

    p = add("up", "start a local federation (master, sub-domains, agents) as processes on this machine")
    p.add_argument(
        "--topology", metavar="FILE", help="topology file (default: 2 regions x 1 sub-domain x 2 agents)"
    )
    p.add_argument("--store", metavar="URL", help="etcd://HOST:PORT instead of the embedded SQLite files")
    p.add_argument("--detach", action="store_true", help="return once everything is ready")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="readiness deadline (default 60)")
    _home_arg(p)

    p = add("down", "stop the local federation")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="grace per tier before SIGKILL (default 10)"
    )
    _home_arg(p)

    p = add("status", "the local federation's processes")
    _home_arg(p)

    p = add("demo", "start a local federation, run sample jobs, show the results, stop it")
    p.add_argument("--keep", action="store_true", help="leave the federation running afterwards")
    _home_arg(p)

    p = add("certs", "the cluster's certificates: certs init | issue | show")
    certs = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    c = certs.add_parser(
        "init",
        parents=[common],
        help="create a cluster CA and a client certificate for you",
        description="Create a cluster CA (kept if it exists, unless --force) and a client certificate "
        "client-<user> for you, in DIR (default: $DOMAINOS_HOME/pki or ~/.domainos/pki).",
    )
    c.add_argument(
        "--dir", metavar="DIR", help="PKI directory (default: $DOMAINOS_HOME/pki or ~/.domainos/pki)"
    )
    c.add_argument(
        "--force", action="store_true", help="replace an existing CA (every certificate must be re-issued)"
    )
    c = certs.add_parser(
        "issue",
        parents=[common],
        help="issue (or re-issue, to rotate) a component's certificate",
        description="Issue <role>-<id>.crt/.key signed by the CA in DIR. Re-issuing in place rotates it: "
        "running daemons use the new files from their next TLS handshake, without a restart.",
    )
    c.add_argument("--role", required=True, help="master | subdomain | agent | client")
    c.add_argument(
        "--id", required=True, dest="ident", metavar="ID", help="the component's id (node id, ...)"
    )
    c.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="DNS name or IP it serves on (repeatable; default 127.0.0.1 and localhost)",
    )
    c.add_argument("--days", type=float, default=365.0, metavar="N", help="validity in days (default 365)")
    c.add_argument(
        "--dir", metavar="DIR", help="PKI directory (default: $DOMAINOS_HOME/pki or ~/.domainos/pki)"
    )
    c = certs.add_parser(
        "show",
        parents=[common],
        help="a certificate's role, id, validity and issuer",
        description="Describe a PEM certificate.",
    )
    c.add_argument("file", metavar="FILE")

    p = add("compose", "write a docker-compose deployment (compose file, daemon configs) for a topology")
    p.add_argument(
        "--topology", metavar="FILE", help="topology file (default: 2 regions x 1 sub-domain x 2 agents)"
    )
    p.add_argument("--out", metavar="DIR", default="deploy", help="output directory (default: deploy)")
    p.add_argument("--image", default="domainos:latest", help="container image (default: domainos:latest)")
    p.add_argument(
        "--pki",
        action="store_true",
        help="also create OUT/pki: a CA (kept if present) and every component's certificate, plus client-admin",
    )

    from domainctl import _sim_command, _sim_subdomains  # standard library only: keeps --help fast

    _sim_command.add_parser(sub, common)
    _sim_subdomains.add_parser(sub, common)

    for name, module in DAEMONS.items():
        sub.add_parser(
            name, help=f"run the {module} daemon (same arguments as python -m {module})", add_help=False
        )
    return parser


def _split_run_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``run [opts] -- CMD...``: everything after the first ``--`` following ``run`` is the command."""
    if "run" not in argv or "--" not in argv:
        return argv, None
    sep = argv.index("--")
    if argv.index("run") > sep:
        return argv, None
    return argv[:sep], argv[sep + 1 :]


def _exec_daemon(name: str, args: list[str]) -> int:
    module = DAEMONS[name]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], env)
    return 0  # not reached


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = _HANDLERS[command].partition(":")
    fn: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), func)
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``domainctl`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in DAEMONS:
        return _exec_daemon(args[0], args[1:])
    args, run_cmd = _split_run_command(args)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return exc.code if isinstance(exc.code, int) else 2
    if run_cmd is not None:
        if ns.command != "run" or ns.cmd:
            print(f"{PROG}: error: '--' only separates the command of `domainctl run`", file=sys.stderr)
            return 2
        ns.cmd = run_cmd
    if not hasattr(ns, "output"):
        ns.output = "table"
    if not hasattr(ns, "master"):
        ns.master = None
    for name in ("tls_ca", "tls_cert", "tls_key"):
        if not hasattr(ns, name):
            setattr(ns, name, None)
    if not hasattr(ns, "insecure"):
        ns.insecure = False
    try:
        return _handler(ns.command)(ns)
    except DomainOSError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
