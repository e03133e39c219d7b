# Sourced by benches/compare, benches/ceiling/run, benches/profile-tiles and
# benches/slow-readers: the settings they share, so that a server measured by
# one is configured as in the others.
#
#   install_packages PKG...  installs Debian packages (as root) without letting
#                    them start their distro services (nginx, lighttpd and
#                    apache2 would take port 80), and leaves those disabled
#   bench_limits     sets nofile (and raises RLIMIT_NOFILE to it), nginx_cache
#                    and tessera_cache (descriptor caches below the limit)
#   bench_workers    prints the worker count: WORKERS, else the cores wrk's
#                    one thread leaves (at least 1)
#   bench_cert DIR   makes DIR/cert.pem and DIR/key.pem once (ECDSA P-256,
#                    self-signed for 127.0.0.1 and localhost) and sets
#                    TLS_CERT and TLS_KEY to them
#   conf_nginx DIR PORT [tls]            writes DIR/nginx.conf, prints the command
#   conf_lighttpd DIR PORT [tls]         writes DIR/lighttpd.conf, prints the command
#   conf_tessera DIR PORT DELIVERY [tls] writes DIR/tessera.toml, prints the command
#   free_port        prints a free loopback port
#
# conf_* read WORK (the data), BIN (tessera), nofile, nginx_cache,
# tessera_cache, nginx_workers, lighttpd_max_worker (0: lighttpd's single
# process), tessera_workers and budget_mib. With `tls` they serve HTTPS on
# TLS_CERT and TLS_KEY instead of HTTP: nginx and lighttpd TLS 1.3 only with
# the one suite TLS13_SUITE and encryption in user space (nginx leaves kernel
# TLS off unless told; lighttpd is told -KTLS), tessera (rustls, user space
# only) as it is configured by default, with /logs opened to anonymous clients
# (with TLS it requires authentication there by default). Without `tls`, the
# configs are the plaintext ones.

install_packages() {
  [ "$(id -u)" = 0 ] || { echo "missing $*; run as root to install them" >&2; return 1; }
  # A policy-rc.d that says no, only for the duration of the install.
  local made_policy=0 svc
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  for svc in nginx lighttpd apache2; do
    [[ " $* " == *" $svc "* ]] || continue
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      service "$svc" stop >/dev/null 2>&1 || true
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
}

bench_limits() {
  local hard fd_cache
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] && hard=1048576
  nofile=$(( hard < 65536 ? hard : 65536 ))
  ulimit -n "$nofile"
  # Descriptor caches are capped below the open-file limit, keeping room for
  # 64 connections, logs and the like: a cache larger than the limit makes
  # opens fail (nginx answers 500 once its open_file_cache passes
  # RLIMIT_NOFILE).
  fd_cache=$(( nofile - 2048 ))
  nginx_cache=$(( fd_cache < 50000 ? fd_cache : 50000 ))
  tessera_cache=$(( fd_cache < 30000 ? fd_cache : 30000 ))
}

bench_workers() {
  local cores
  cores=$(nproc)
  echo "${WORKERS:-$(( cores > 2 ? cores - 1 : 1 ))}"
}

# The suite every TLS server is held to: tessera (rustls with aws-lc-rs, in
# its own order of suites) prefers it, OpenSSL's clients (curl, wrk, s_client)
# offer it first, and nginx and lighttpd are configured to it alone.
TLS13_SUITE=TLS_AES_256_GCM_SHA384

bench_cert() { # dir
  mkdir -p "$1"
  TLS_CERT=$1/cert.pem TLS_KEY=$1/key.pem
  # Reused while valid for another day, remade otherwise.
  if [ -s "$TLS_KEY" ] && openssl x509 -in "$TLS_CERT" -noout -checkend 86400 >/dev/null 2>&1; then
    return 0
  fi
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$TLS_KEY" -out "$TLS_CERT" -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" -addext "extendedKeyUsage=serverAuth" 2>/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

conf_nginx() { # dir port [tls]
  mkdir -p "$1/tmp"
  local listen="listen 127.0.0.1:$2;" tls=""
  if [ "${3:-}" = tls ]; then
    listen="listen 127.0.0.1:$2 ssl;"
    tls="
    ssl_certificate $TLS_CERT;
    ssl_certificate_key $TLS_KEY;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites $TLS13_SUITE;"
  fi
  cat > "$1/nginx.conf" <<CONF
worker_processes $nginx_workers;
worker_rlimit_nofile $nofile;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
user www-data;
events { worker_connections 4096; }
http {
  types { image/png png; text/plain log; }
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  open_file_cache max=$nginx_cache inactive=60s;
  open_file_cache_valid 60s;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  server {
    $listen
    root $WORK;$tls
  }
}
CONF
  echo nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log"
}

conf_lighttpd() { # dir port [tls]
  cat > "$1/lighttpd.conf" <<EOF
server.document-root = "$WORK"
server.bind = "127.0.0.1"
server.port = $2
server.pid-file = "$1/lighttpd.pid"
server.errorlog = "$1/error.log"
server.modules = ()
server.network-backend = "sendfile"
server.stat-cache-engine = "inotify"
server.max-fds = $nofile
server.max-connections = 4096
server.max-keep-alive-requests = 65535
server.max-keep-alive-idle = 60
server.max-worker = $lighttpd_max_worker
mimetype.assign = ( ".png" => "image/png", ".log" => "text/plain" )
EOF
  if [ "${3:-}" = tls ]; then
    cat >> "$1/lighttpd.conf" <<EOF
server.modules += ( "mod_openssl" )
ssl.engine = "enable"
ssl.pemfile = "$TLS_CERT"
ssl.privkey = "$TLS_KEY"
ssl.openssl.ssl-conf-cmd = ( "MinProtocol" => "TLSv1.3", "Ciphersuites" => "$TLS13_SUITE", "Options" => "-KTLS" )
EOF
  fi
  echo lighttpd -D -f "$1/lighttpd.conf"
}

conf_tessera() { # dir port delivery [tls]
  local state=$WORK/state-$3
  cat > "$1/tessera.toml" <<CONF
[cache]
max_open_files = $tessera_cache
memory_budget_mib = $budget_mib
[http]
workers = $tessera_workers
CONF
  if [ "${4:-}" = tls ]; then
    state=$state-tls
    cat >> "$1/tessera.toml" <<CONF
[tls]
cert = "$TLS_CERT"
key = "$TLS_KEY"
[[access]]
prefix = "/logs"
allow = ["public"]
CONF
  fi
  echo "$BIN" serve --config "$1/tessera.toml" --listen "127.0.0.1:$2" --tiles "$WORK/tiles" \
    --logs "$WORK/logs" --state "$state" --delivery "$3"
}
