"""One insert and one select through clickhouse-connect, plus the raw error contract.

Usage: clickhouse_connect_check.py http://HOST:PORT   (exit 0 and "clickhouse-connect: ok")
"""
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

import clickhouse_connect

url = urllib.parse.urlsplit(sys.argv[1])
client = clickhouse_connect.get_client(host=url.hostname, port=url.port, username="default")
db = f"it_connect_{uuid.uuid4().hex[:16]}"
client.command(f"CREATE DATABASE {db}")
client.command(f"CREATE TABLE {db}.t (id UInt32, name String, price Decimal(12, 2)) ENGINE = MergeTree ORDER BY id")
rows = [[i, f"n{i}", i * 1.5] for i in range(1000)]
client.insert(f"{db}.t", rows, column_names=["id", "name", "price"])
result = client.query(f"SELECT id, name, toFloat64(price) FROM {db}.t ORDER BY id")
assert [list(r) for r in result.result_rows] == rows, result.result_rows[:3]
assert client.query(f"SELECT count() FROM {db}.t WHERE id >= {{low:UInt32}}", parameters={"low": 500}).result_rows == [(500,)]

# Errors: status, X-ClickHouse-Exception-Code and the Code: N. body, as ClickHouse sends them.
try:
    urllib.request.urlopen(f"{sys.argv[1]}/?query=SELECT+*+FROM+{db}.missing")
    sys.exit("expected an error")
except urllib.error.HTTPError as e:
    body = e.read().decode()
    assert e.code == 404, e.code
    assert e.headers["X-ClickHouse-Exception-Code"] == "60", dict(e.headers)
    assert body.startswith("Code: 60. DB::Exception:"), body
print("clickhouse-connect: ok")
