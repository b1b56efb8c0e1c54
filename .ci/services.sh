# Services the test suite needs, started for CI (and usable by hand). Source it: `. .ci/services.sh`.
#
# * Debian packages: postgresql (a throwaway server for the PostgreSQL store tests), chromium and
#   chromium-driver (the web page test drives a real headless browser); installed when missing.
# * A throwaway PostgreSQL cluster owned by the postgres user, in a fresh temporary folder, listening only on
#   a unix socket in that folder and on 127.0.0.1 at a free port; it is stopped when the shell that sourced
#   this file exits. Exports FACEFORGE_TEST_PG_URL for tests/serve.
#
# Idempotent: a second run finds the packages in place and starts another cluster only if
# FACEFORGE_TEST_PG_URL does not already answer.

_ff_services() {
    local need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "services: installing ${need[*]}"
        if [ "$(id -u)" -eq 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
        else
            echo "services: not root, cannot install ${need[*]}; the tests that need them will skip" >&2
        fi
    fi

    if [ -n "${FACEFORGE_TEST_PG_URL:-}" ] && command -v psql >/dev/null 2>&1 \
        && psql "$FACEFORGE_TEST_PG_URL" -Atc 'SELECT 1' >/dev/null 2>&1; then
        echo "services: PostgreSQL already at $FACEFORGE_TEST_PG_URL"
        return 0
    fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
    if [ -z "$bin" ]; then
        echo "services: no PostgreSQL server binaries; the PostgreSQL tests will skip" >&2
        return 0
    fi
    local run_as=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
        run_as=(su postgres -s /bin/sh -c)
    else
        run_as=(sh -c)
    fi
    local dir port
    dir=$(mktemp -d /tmp/faceforge-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${run_as[@]}" "$bin/initdb -D $dir/data -U faceforge --auth=trust -E UTF8 >$dir/initdb.log 2>&1" || {
        echo "services: initdb failed:" >&2; cat "$dir/initdb.log" >&2; return 1; }
    "${run_as[@]}" "$bin/pg_ctl -D $dir/data -l $dir/server.log -w -t 60 -o \"-k $dir -p $port -h 127.0.0.1 -c fsync=off -c max_connections=200\" start >/dev/null" || {
        echo "services: PostgreSQL did not start:" >&2; cat "$dir/server.log" >&2; return 1; }
    export FACEFORGE_TEST_PG_URL="postgresql://faceforge@127.0.0.1:$port/postgres"
    export FACEFORGE_TEST_PG_DIR="$dir"
    # shellcheck disable=SC2064
    trap "${run_as[*]@Q} '$bin/pg_ctl -D $dir/data -m immediate stop' >/dev/null 2>&1; rm -rf '$dir'" EXIT
    echo "services: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $FACEFORGE_TEST_PG_URL"
}
_ff_services
