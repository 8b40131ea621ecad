#!/bin/bash
# Third init step of the docker compose ClickHouse (after 01-schema.sql and 02-users.sql, which
# is clickhouse/users.sql with its placeholder passwords): sets the passwords of the sink's and
# Grafana's users from the environment (.env: CLICKHOUSE_SINK_PASSWORD,
# CLICKHOUSE_READER_PASSWORD). Runs once, at the first start on an empty data volume, through the
# image's /docker-entrypoint-initdb.d; clickhouse-client logs in as the default user with
# CLICKHOUSE_PASSWORD from the environment.

# The entrypoint sources scripts that are not executable (a checkout that lost the mode bit):
# run as a child then, so these shell options stay out of the entrypoint.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  bash "${BASH_SOURCE[0]}"
  return $?
fi
set -euo pipefail

# A ClickHouse string literal: backslashes and single quotes escaped.
sql_string() {
  local text=${1//\\/\\\\}
  text=${text//\'/\\\'}
  printf "'%s'" "$text"
}

: "${CLICKHOUSE_SINK_PASSWORD:?set CLICKHOUSE_SINK_PASSWORD (see .env)}"
: "${CLICKHOUSE_READER_PASSWORD:?set CLICKHOUSE_READER_PASSWORD (see .env)}"

echo "03-passwords.sh: setting the passwords of clickstream_sink and clickstream_reader" >&2
clickhouse-client --host 127.0.0.1 --multiquery <<SQL
ALTER USER clickstream_sink IDENTIFIED WITH sha256_password BY $(sql_string "$CLICKHOUSE_SINK_PASSWORD");
ALTER USER clickstream_reader IDENTIFIED WITH sha256_password BY $(sql_string "$CLICKHOUSE_READER_PASSWORD");
SQL
