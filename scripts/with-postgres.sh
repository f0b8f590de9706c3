#!/usr/bin/env bash
# Runs a command with TEST_DATABASE_URL and DATABASE_URL pointing at a Postgres
# server that answers. In order it tries: TEST_DATABASE_URL, DATABASE_URL,
# the local server at 127.0.0.1:5432, and finally a throwaway cluster started
# from the installed PostgreSQL binaries (initdb/pg_ctl) in a temporary folder,
# stopped and removed when the command ends.
#
# usage: scripts/with-postgres.sh COMMAND [ARGS...]
set -euo pipefail

log() { printf 'with-postgres: %s\n' "$*" >&2; }

answers() {
	local url=$1
	if command -v psql >/dev/null 2>&1; then
		PGCONNECT_TIMEOUT=3 psql "$url" -Atqc 'SELECT 1' >/dev/null 2>&1
	elif command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -t 3 -d "$url" >/dev/null 2>&1
	else
		return 1
	fi
}

find_bin() {
	local name=$1 dir
	if command -v "$name" >/dev/null 2>&1; then
		command -v "$name"
		return 0
	fi
	for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -Vr); do
		if [ -x "$dir/$name" ]; then
			echo "$dir/$name"
			return 0
		fi
	done
	return 1
}


for candidate in "${TEST_DATABASE_URL:-}" "${DATABASE_URL:-}" "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"; do
	if [ -n "$candidate" ] && answers "$candidate"; then
		log "using the Postgres server that answers at the configured URL"
		export TEST_DATABASE_URL=$candidate DATABASE_URL=$candidate
		exec "$@"
	fi
done

initdb=$(find_bin initdb) && pg_ctl=$(find_bin pg_ctl) || {
	log "no Postgres answers and no PostgreSQL server binaries (initdb, pg_ctl) are installed."
	log "install them (Debian/Ubuntu: apt-get install -y postgresql; macOS: brew install postgresql@16)"
	log "or point TEST_DATABASE_URL at a server you can create schemas in."
	exit 1
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/taskflow-watch-pg.XXXXXX")
port=$(( 20000 + RANDOM % 20000 ))
as_user=()
if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root: run the throwaway cluster as an unprivileged user.
	user=postgres
	id "$user" >/dev/null 2>&1 || user=nobody
	chown "$user" "$dir"
	as_user=(runuser -u "$user" --)
fi

cleanup() {
	"${as_user[@]}" "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT

log "starting a throwaway cluster in $dir on port $port"
"${as_user[@]}" "$initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 || {
	cat "$dir/initdb.log" >&2
	exit 1
}
"${as_user[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
	-o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null || {
	cat "$dir/server.log" >&2
	exit 1
}
url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
export TEST_DATABASE_URL=$url DATABASE_URL=$url

# Run the command as a child and pass Ctrl-C or a TERM on to it, so it
# shuts down gracefully; its exit status becomes ours, and the cluster is
# removed after it has stopped.
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM
status=0
while :; do
	wait "$child" && status=0 || status=$?
	kill -0 "$child" 2>/dev/null || break
done
exit "$status"
