"""The real services of the lab's server: nginx, OpenSSH, dnsmasq, iodined, an SMB-port
listener and an FTP login service that refuses every password.

Each service is rendered into the lab's run directory (configs, content, keys, logs) and
started inside the server's namespace with its PID recorded, so ``mld lab down`` can stop it
even after the process that started it died.

sshd needs a login account. Rather than add one to the machine, sshd runs in its own mount
namespace (``ip netns exec`` makes one) with copies of /etc/passwd, /etc/shadow and
/etc/group bind-mounted in place that hold the lab user; the machine's files never change.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from base.errors import LabError
from lab.netns import exec_args, run, run_in
from lab.topology import Host, Topology

__all__ = [
    "DNS_ZONE",
    "HTTP_ADMIN",
    "SSH_USER",
    "TUNNEL_ZONE",
    "Service",
    "ServiceProcess",
    "credentials",
    "reap",
    "start_services",
]

log = logging.getLogger(__name__)

SSH_USER = "labuser"
SSH_PASSWORD = "Tr0ub4dor-lab"
HTTP_ADMIN = ("admin", "c0rrect-h0rse")
TUNNEL_PASSWORD = "lab-tunnel"
DNS_ZONE = "lab.example"
TUNNEL_ZONE = f"t.{DNS_ZONE}"
TUNNEL_NET = "10.99.0.1/24"
TUNNEL_PORT = 5353
PAGES = 24
BULK_MB = 16


def credentials() -> dict[str, str]:
    """Values recipes may use in their commands (``{ssh_password}`` and so on)."""
    return {
        "ssh_user": SSH_USER,
        "ssh_password": SSH_PASSWORD,
        "http_user": HTTP_ADMIN[0],
        "http_password": HTTP_ADMIN[1],
        "tunnel_password": TUNNEL_PASSWORD,
        "dns_zone": DNS_ZONE,
        "tunnel_zone": TUNNEL_ZONE,
        "tunnel_server": TUNNEL_NET.split("/")[0],
        "bulk_path": f"/files/bulk-{BULK_MB}M.bin",
    }


@dataclass(frozen=True)
class ServiceProcess:
    """One started process, as recorded in the lab state."""

    service: str
    namespace: str
    pid: int
    argv: tuple[str, ...]
    log: str


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    ports: list[tuple[str, int]]  # ("tcp"|"udp", port) it must listen on before it is up


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _openssl_hash(kind: str, password: str) -> str:
    return run(["openssl", "passwd", f"-{kind}", "-stdin"], input=password + "\n").stdout.strip()


def _http(run_dir: Path, host: Host) -> Service:
    www = run_dir / "www"
    rng = random.Random(7)
    words = [
        "flow",
        "packet",
        "gateway",
        "sensor",
        "alert",
        "model",
        "forest",
        "tunnel",
        "report",
        "audit",
        "policy",
    ]
    for i in range(PAGES):
        links = "".join(
            f'<li><a href="/page{j}.html">page {j}</a></li>' for j in rng.sample(range(PAGES), 5)
        )
        body = " ".join(rng.choice(words) for _ in range(rng.randint(200, 3000)))
        _write(
            www / f"page{i}.html",
            f"<html><body><h1>Page {i}</h1><ul>{links}</ul><p>{body}</p></body></html>\n",
        )
    _write(
        www / "index.html",
        "<html><body>"
        + "".join(f'<a href="/page{i}.html">page {i}</a> ' for i in range(PAGES))
        + "</body></html>\n",
    )
    bulk = www / "files" / f"bulk-{BULK_MB}M.bin"
    if not bulk.exists() or bulk.stat().st_size != BULK_MB << 20:
        bulk.parent.mkdir(parents=True, exist_ok=True)
        with open(bulk, "wb") as f:
            for _ in range(BULK_MB):
                f.write(os.urandom(1 << 20))
    _write(www / "admin" / "index.html", "<html><body>admin console</body></html>\n")
    htpasswd = _write(
        run_dir / "nginx" / "htpasswd", f"{HTTP_ADMIN[0]}:{_openssl_hash('apr1', HTTP_ADMIN[1])}\n"
    )
    logs = run_dir / "logs"
    # HTTPS on 443 with a self-signed certificate (made once per run directory): the
    # lab's TLS services (C2 check-ins over TLS, HTTPS logins).
    cert, key = run_dir / "nginx" / "server.crt", run_dir / "nginx" / "server.key"
    if not cert.exists() or not key.exists():
        run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", f"/CN=server.{DNS_ZONE}", "-keyout", str(key), "-out", str(cert)],
        )  # fmt: skip
    conf = _write(
        run_dir / "nginx" / "nginx.conf",
        f"""\
# Rendered by lab/services.py for the lab's server namespace.
daemon off;
user root;
worker_processes 1;
pid {run_dir}/nginx/nginx.pid;
error_log {logs}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {logs}/nginx-access.log;
    client_body_temp_path {run_dir}/nginx/body;
    proxy_temp_path {run_dir}/nginx/proxy;
    fastcgi_temp_path {run_dir}/nginx/fastcgi;
    uwsgi_temp_path {run_dir}/nginx/uwsgi;
    scgi_temp_path {run_dir}/nginx/scgi;
    keepalive_timeout 30s;
    default_type application/octet-stream;
    server {{
        listen 80;
        listen [::]:80;
        listen 443 ssl;
        listen [::]:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
        location /admin/ {{
            auth_basic "lab admin";
            auth_basic_user_file {htpasswd};
        }}
    }}
}}
""",
    )
    return Service(
        "http",
        ["nginx", "-c", str(conf), "-e", str(logs / "nginx-error.log")],
        [("tcp", 80), ("tcp", 443)],
    )


def _ssh(run_dir: Path, host: Host) -> Service:
    d = run_dir / "ssh"
    home = d / "home"
    home.mkdir(parents=True, exist_ok=True)
    key = d / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    uid = 4242
    passwd = Path("/etc/passwd").read_text().rstrip("\n").splitlines()
    passwd = [line for line in passwd if not line.startswith(SSH_USER + ":")]
    passwd.append(f"{SSH_USER}:x:{uid}:{uid}:ML Defender lab user:{home}:/bin/sh")
    shadow = [
        line
        for line in Path("/etc/shadow").read_text().splitlines()
        if not line.startswith(SSH_USER + ":")
    ]
    shadow.append(f"{SSH_USER}:{_openssl_hash('6', SSH_PASSWORD)}:19000:0:99999:7:::")
    group = [
        line
        for line in Path("/etc/group").read_text().splitlines()
        if not line.startswith(SSH_USER + ":")
    ]
    group.append(f"{SSH_USER}:x:{uid}:")
    _write(d / "passwd", "\n".join(passwd) + "\n")
    _write(d / "shadow", "\n".join(shadow) + "\n", 0o600)
    _write(d / "group", "\n".join(group) + "\n")
    os.chown(home, uid, uid)
    conf = _write(
        d / "sshd_config",
        f"""\
# Rendered by lab/services.py for the lab's server namespace.
Port 22
ListenAddress 0.0.0.0
ListenAddress ::
HostKey {key}
PidFile {d}/sshd.pid
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {SSH_USER}
MaxAuthTries 6
MaxStartups 64:30:128
LoginGraceTime 20
LogLevel VERBOSE
Subsystem sftp internal-sftp
""",
        0o600,
    )
    binds = " && ".join(
        f"mount --bind {shlex.quote(str(d / name))} /etc/{name}"
        for name in ("passwd", "shadow", "group")
    )
    script = (
        f"mkdir -p /run/sshd && {binds} && exec /usr/sbin/sshd -D -f {shlex.quote(str(conf))} "
        f"-E {shlex.quote(str(run_dir / 'logs' / 'sshd.log'))}"
    )
    return Service("ssh", ["sh", "-c", script], [("tcp", 22)])


def _dns(run_dir: Path, host: Host, with_tunnel: bool) -> Service:
    logs = run_dir / "logs"
    # big.<zone>: twelve 400-byte TXT records (one per line: dnsmasq caps line length), a
    # ~5 KB answer to a small query, what amplification floods ask reflectors for.
    records = [
        f"address=/www.{DNS_ZONE}/{host.ipv4}",
        f"address=/ssh.{DNS_ZONE}/{host.ipv4}",
        f"local=/{DNS_ZONE}/",
    ]
    records += [
        f'txt-record=big.{DNS_ZONE},"v=lab{i:03d}-{"k" * 190}","{"q" * 200}"' for i in range(12)
    ]
    for i, addr in enumerate(
        [str(n.ipv4) for n in host.nics] + [str(a) for n in host.nics for a in n.extra_ipv4]
    ):
        records.append(f"host-record=h{i}.{DNS_ZONE},{addr}")
    if host.ipv6:
        records.append(f"host-record=www6.{DNS_ZONE},{host.ipv6}")
    if with_tunnel:
        records.append(f"server=/{TUNNEL_ZONE}/127.0.0.1#{TUNNEL_PORT}")
    conf = _write(
        run_dir / "dns" / "dnsmasq.conf",
        "# Rendered by lab/services.py.\n"
        + "\n".join(
            [
                "no-resolv",
                "no-hosts",
                "no-poll",
                "bind-interfaces",
                "listen-address=" + host.ipv4,
                "port=53",
                "user=root",
                "group=root",
                "log-queries",
                f"log-facility={logs}/dnsmasq.log",
                f"pid-file={run_dir}/dns/dnsmasq.pid",
                "edns-packet-max=4096",
                "cache-size=1000",
                "dns-forward-max=500",
                *records,
            ]
        )
        + "\n",
    )
    return Service("dns", ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"], [("udp", 53)])


def _tunnel_dns(run_dir: Path, host: Host) -> Service:
    # iodined answers the tunnel zone on loopback; dnsmasq forwards the zone to it, as a
    # resolver forwards a delegated zone. -c: queries come from dnsmasq, not the client.
    return Service(
        "tunnel_dns",
        [
            "iodined",
            "-f",
            "-c",
            "-P",
            TUNNEL_PASSWORD,
            "-l",
            "127.0.0.1",
            "-p",
            str(TUNNEL_PORT),
            TUNNEL_NET,
            TUNNEL_ZONE,
        ],
        [("udp", TUNNEL_PORT)],
    )


def _smb(run_dir: Path, host: Host) -> Service:
    # Port 445 answers on every inside address (like file servers); 3389 stays closed.
    return Service(
        "smb",
        [
            "socat",
            "TCP-LISTEN:445,fork,reuseaddr,backlog=256",
            "SYSTEM:'printf SMB-LAB; sleep 0.2'",
        ],
        [("tcp", 445)],
    )


# The FTP service: the control-channel dialogue of a login (RFC 959: 220 greeting, USER ->
# 331, PASS -> 530 after a short delay, as servers slow guessers down), one bash per
# connection under socat. Every refused password is logged with the client's address, so
# recipes have evidence. No data channel: password guessing never gets that far.
_FTP_SCRIPT = r"""#!/bin/bash
printf '220 lab FTP service ready\r\n'
while IFS= read -r -t 30 line; do
  line=${line%$'\r'}
  verb=${line%% *}
  case "${verb^^}" in
    USER) printf '331 Please specify the password.\r\n' ;;
    PASS) sleep 0.2
          echo "$(date +%s) FTP login failed from $SOCAT_PEERADDR" >> "$FTP_LOG"
          printf '530 Login incorrect.\r\n' ;;
    QUIT) printf '221 Goodbye.\r\n'; exit 0 ;;
    SYST) printf '215 UNIX Type: L8\r\n' ;;
    FEAT) printf '211 End\r\n' ;;
    AUTH) printf '530 Please login with USER and PASS.\r\n' ;;
    *) printf '530 Please login with USER and PASS.\r\n' ;;
  esac
done
"""


def _ftp(run_dir: Path, host: Host) -> Service:
    script = _write(run_dir / "ftp" / "session.sh", _FTP_SCRIPT, 0o755)
    log_path = run_dir / "logs" / "ftp.log"
    log_path.touch()
    return Service(
        "ftp",
        [
            "env",
            f"FTP_LOG={log_path}",
            "socat",
            "TCP-LISTEN:21,fork,reuseaddr,backlog=256",
            f"EXEC:{script}",
        ],
        [("tcp", 21)],
    )


def _listening(ns: str, proto: str, port: int) -> bool:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    out = run_in(ns, "ss", flag, check=False).stdout
    return any(
        line.split()[3].rsplit(":", 1)[-1] == str(port)
        for line in out.splitlines()
        if len(line.split()) > 3
    )


# The Popen objects of the daemons this process started: kept so they are not collected
# while running (a ResourceWarning) and so lab.netns.kill_pids can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start_services(topo: Topology, run_dir: Path, timeout_s: float = 15.0) -> list[ServiceProcess]:
    """Start every service of every host; return the processes once each one listens."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    started: list[ServiceProcess] = []
    for host in topo.hosts.values():
        ns = topo.namespace(host.name)
        for name in host.services:
            if name == "http":
                svc = _http(run_dir, host)
            elif name == "ssh":
                svc = _ssh(run_dir, host)
            elif name == "dns":
                svc = _dns(run_dir, host, with_tunnel="tunnel_dns" in host.services)
            elif name == "tunnel_dns":
                svc = _tunnel_dns(run_dir, host)
            elif name == "ftp":
                svc = _ftp(run_dir, host)
            else:
                svc = _smb(run_dir, host)
            out = run_dir / "logs" / f"{name}.out"
            argv = exec_args(ns, svc.argv)
            with open(out, "ab") as sink:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _CHILDREN[proc.pid] = proc
            started.append(ServiceProcess(name, ns, proc.pid, tuple(argv), str(out)))
            deadline = time.monotonic() + timeout_s
            while not all(_listening(ns, p, port) for p, port in svc.ports):
                if proc.poll() is not None:
                    tail = out.read_text(errors="replace")[-600:]
                    raise LabError(f"{name} on {host.name} exited ({proc.returncode}): {tail}")
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{name} on {host.name} is not listening on "
                        f"{svc.ports} after {timeout_s:g} s; see {out}"
                    )
                time.sleep(0.1)
            log.info(
                "%s on %s: pid %d, listening on %s",
                name,
                host.name,
                proc.pid,
                ", ".join(f"{p}/{port}" for p, port in svc.ports),
            )
    return started


def reap(pid: int) -> None:
    """Forget (and wait for) a daemon this process started, once it has been stopped."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
