#!/bin/sh
# Grafana's entrypoint in docker compose: no well-known admin password, then Grafana's own
# entrypoint (/run.sh).
#
# Grafana creates its `admin` user once, when its database is new, with the password in
# GF_SECURITY_ADMIN_PASSWORD, and `admin` if that is empty. So:
# - GRAFANA_ADMIN_PASSWORD set in .env: used at that first start ("admin" itself is refused);
# - empty (the default): at the first start (no grafana.db yet) a random password is made,
#   printed once to the log (`docker compose logs grafana | grep password`) and never stored;
# - later starts: the database keeps whatever password admin has now; nothing is printed.
# To change or reset it later: Grafana's profile page, or
#   docker compose exec grafana grafana cli admin reset-admin-password NEW-PASSWORD
set -eu
data=${GF_PATHS_DATA:-/var/lib/grafana}
password=${GF_SECURITY_ADMIN_PASSWORD:-}
if [ "$password" = admin ]; then
  echo "grafana: GRAFANA_ADMIN_PASSWORD is 'admin', the password everyone tries first: set another one in .env, or leave it empty to have one generated" >&2
  exit 1
fi
if [ -z "$password" ]; then
  if [ -e "$data/grafana.db" ]; then
    unset GF_SECURITY_ADMIN_PASSWORD
  else
    password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    export GF_SECURITY_ADMIN_PASSWORD="$password"
    echo "grafana: first start: the password of the user admin is $password (generated, shown only this once; change it in Grafana or with 'grafana cli admin reset-admin-password')"
  fi
fi
exec "${GRAFANA_RUN:-/run.sh}" "$@"
