"""Config files for the interop servers, each written for one port into a directory of its own.

Every web server serves the same :class:`~tests.interop.servers.StaticTree` with, where it can: the
redirect chain :data:`~tests.interop.servers.CHAIN`, a self-redirect at ``/loop``, gzip for text, a
404 for anything else. Settings that tests vary (keep-alive limits, TLS, HTTP/2) are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.interop.servers import CHAIN, LOOP, StaticTree

APACHE_MODULES = Path("/usr/lib/apache2/modules")


@dataclass(frozen=True)
class Certificate:
    """A server certificate and key in PEM files; ``combined`` holds both (lighttpd wants one file)."""

    cert: Path
    key: Path
    combined: Path


def nginx_conf(
    workdir: Path,
    port: int,
    tree: StaticTree,
    *,
    certificate: Certificate | None = None,
    http2: bool = False,
    keepalive_requests: int = 1000,
    keepalive_timeout: str = "75s",
) -> Path:
    """nginx in the foreground, one worker, no privilege drop; HTTP/1.1, or TLS (and h2) with ``certificate``."""
    listen = f"127.0.0.1:{port}"
    tls = ""
    if certificate is not None:
        listen += " ssl http2" if http2 else " ssl"
        tls = f"ssl_certificate {certificate.cert};\n        ssl_certificate_key {certificate.key};"
    chain = "\n".join(f"        location = {path} {{ return {status} {target}; }}" for path, status, target in CHAIN)
    temp = workdir / "temp"
    text = f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format interop '$connection $connection_requests $server_protocol $request_method $request_uri $status';
    access_log {workdir}/access.log interop;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    gzip on;
    gzip_min_length 0;
    gzip_types text/plain;
    keepalive_requests {keepalive_requests};
    keepalive_timeout {keepalive_timeout};
    server {{
        listen {listen};
        server_name localhost;
        {tls}
        root {tree.root};
{chain}
        location = {LOOP} {{ return 302 {LOOP}; }}
        # Any method, body read and dropped: POSTs for the HTTP/2 and proxy tests.
        location = /method {{ return 200 "$request_method\\n"; }}
    }}
}}
"""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / name).mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def apache_conf(
    workdir: Path,
    port: int,
    tree: StaticTree,
    *,
    certificate: Certificate | None = None,
    http2: bool = False,
    max_keepalive_requests: int = 100,
    keepalive_timeout: int = 5,
) -> Path:
    """apache2 with our own config and modules (event MPM), run by ``apache2 -f CONF -DFOREGROUND``."""
    modules = [
        "mpm_event",
        "authz_core",
        "alias",
        "dir",
        "mime",
        "filter",
        "deflate",
        "headers",
    ]
    if certificate is not None:
        modules += ["socache_shmcb", "ssl"]
    if http2:
        modules.append("http2")
    loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules)
    tls = ""
    if certificate is not None:
        tls = f"""\
SSLEngine on
SSLCertificateFile {certificate.cert}
SSLCertificateKeyFile {certificate.key}
SSLSessionCache shmcb:{workdir}/ssl_scache(512000)
"""
    protocols = "Protocols h2 http/1.1" if http2 else "Protocols http/1.1"
    chain = "\n".join(
        f"Redirect {status} {path} http{'s' if certificate else ''}://127.0.0.1:{port}{target}"
        for path, status, target in CHAIN
    )
    text = f"""\
ServerRoot {workdir}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
{loads}
User nobody
Group nogroup
PidFile {workdir}/apache2.pid
DefaultRuntimeDir {workdir}
Mutex file:{workdir} default
ErrorLog {workdir}/error.log
LogLevel warn
TypesConfig /etc/mime.types
StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
KeepAlive On
MaxKeepAliveRequests {max_keepalive_requests}
KeepAliveTimeout {keepalive_timeout}
{protocols}
{tls}
DocumentRoot {tree.root}
<Directory {tree.root}>
    Require all granted
</Directory>
AddOutputFilterByType DEFLATE text/plain
{chain}
RedirectMatch 302 ^{LOOP}$ {LOOP}
"""
    path = workdir / "apache2.conf"
    path.write_text(text)
    return path


def lighttpd_conf(
    workdir: Path,
    port: int,
    tree: StaticTree,
    *,
    certificate: Certificate | None = None,
    http2: bool = True,
    max_keepalive_requests: int = 1000,
    max_keepalive_idle: int = 5,
) -> Path:
    """lighttpd in the foreground (``-D``); over TLS it speaks h2 too (built in since 1.4.56) unless told not to."""
    tls = ""
    if certificate is not None:
        tls = f"""\
ssl.engine = "enable"
ssl.pemfile = "{certificate.cert}"
ssl.privkey = "{certificate.key}"
"""
    redirects = ", ".join(f'"^{path}$" => "{target}"' for path, _, target in CHAIN) + f', "^{LOOP}$" => "{LOOP}"'
    flags = '"server.h2proto" => "enable"' if http2 else '"server.h2proto" => "disable"'
    text = f"""\
server.modules = ("mod_redirect", "mod_deflate"{', "mod_openssl"' if certificate else ""})
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{tree.root}"
server.errorlog = "{workdir}/error.log"
server.feature-flags = ({flags})
server.max-keep-alive-requests = {max_keepalive_requests}
server.max-keep-alive-idle = {max_keepalive_idle}
mimetype.assign = (".txt" => "text/plain", ".bin" => "application/octet-stream")
url.redirect = ({redirects})
url.redirect-code = 302
deflate.allowed-encodings = ("gzip")
deflate.mimetypes = ("text/plain")
deflate.cache-dir = ""
{tls}"""
    path = workdir / "lighttpd.conf"
    path.write_text(text)
    return path


def caddyfile(workdir: Path, port: int, tree: StaticTree, *, certificate: Certificate) -> Path:
    """caddy over TLS with our certificate: admin endpoint off, no ACME, h1 and h2 only (no UDP)."""
    chain = "\n".join(f"    redir {path} {target} {status}" for path, status, target in CHAIN)
    text = f"""\
{{
    admin off
    auto_https off
    storage file_system {{
        root {workdir}/data
    }}
    servers {{
        protocols h1 h2
    }}
}}

https://127.0.0.1:{port} {{
    bind 127.0.0.1
    tls {certificate.cert} {certificate.key}
    root * {tree.root}
{chain}
    redir {LOOP} {LOOP} 302
    encode gzip
    file_server
}}
"""
    path = workdir / "Caddyfile"
    path.write_text(text)
    return path


def h2o_conf(workdir: Path, port: int, tree: StaticTree, *, certificate: Certificate | None = None) -> Path:
    """h2o (worker mode, in the foreground) as user nobody; TLS with ALPN h2 when given a certificate."""
    ssl = ""
    if certificate is not None:
        ssl = f"""
  ssl:
    certificate-file: {certificate.cert}
    key-file: {certificate.key}"""
    scheme = "https" if certificate else "http"
    chain = "".join(
        f"""
      {path}:
        redirect:
          status: {status}
          url: {scheme}://127.0.0.1:{port}{target}"""
        for path, status, target in ((*CHAIN, (LOOP, 302, LOOP)))
    )
    text = f"""\
user: nobody
pid-file: {workdir}/h2o.pid
error-log: {workdir}/error.log
num-threads: 1
listen:
  host: 127.0.0.1
  port: {port}{ssl}
compress: [gzip]
hosts:
  "127.0.0.1:{port}":
    paths:{chain}
      /:
        file.dir: {tree.root}
"""
    path = workdir / "h2o.conf"
    path.write_text(text)
    return path


SQUID_AUTH_HELPER = Path("/usr/lib/squid/basic_ncsa_auth")
# The password "secret" hashed as `openssl passwd -apr1 -salt abcdefgh secret` prints it.
SQUID_PASSWORD_HASH = "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"


def squid_conf(workdir: Path, port: int, *, user: str | None = None) -> Path:
    """squid as a plain forward proxy for 127.0.0.1 clients: no cache, quick shutdown, logs in workdir.

    With ``user``, clients must authenticate (Basic) as that user with the password "secret".
    """
    access = "http_access allow localnet"
    if user is not None:
        passwords = workdir / "passwd"
        passwords.write_text(f"{user}:{SQUID_PASSWORD_HASH}\n")
        passwords.chmod(0o644)
        access = f"""\
auth_param basic program {SQUID_AUTH_HELPER} {passwords}
auth_param basic children 2
auth_param basic realm asyncfetch-tests
acl authenticated proxy_auth REQUIRED
http_access allow localnet authenticated"""
    text = f"""\
http_port 127.0.0.1:{port}
acl localnet src 127.0.0.1/32
{access}
http_access deny all
# CONNECT to any port: the tests' TLS servers are on ephemeral ports, not 443.
cache deny all
cache_mem 8 MB
maximum_object_size_in_memory 0 KB
cache_effective_user nobody
cache_log {workdir}/cache.log
access_log stdio:{workdir}/access.log
pid_filename {workdir}/squid.pid
coredump_dir {workdir}
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
forwarded_for delete
"""
    path = workdir / "squid.conf"
    path.write_text(text)
    return path
