# Shared by scripts/*: make sure the PostgreSQL server and client (and socat for benchmarks) are
# installed. On Debian/Ubuntu they are installed with apt-get; elsewhere we say what is missing.

have_pg_server() {
    [ -n "${RDS_AUTH_PROXY_PG_BIN:-}" ] && [ -x "$RDS_AUTH_PROXY_PG_BIN/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v initdb >/dev/null 2>&1
}

# ensure_tools psql pgbench socat ... : installs the Debian packages that provide them.
ensure_tools() {
    local missing=()
    have_pg_server || missing+=(postgresql)
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 && continue
        case "$tool" in
            psql|pgbench) missing+=(postgresql-client) ;;
            socat) missing+=(socat) ;;
            ip|ss) missing+=(iproute2) ;;
            *) missing+=("$tool") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing ${missing[*]}; install the PostgreSQL server and client (e.g. 'brew install postgresql@16'" \
             "or your distribution's postgresql packages), or set RDS_AUTH_PROXY_PG_BIN to the directory holding initdb" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "Installing ${missing[*]} with apt-get..." >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
