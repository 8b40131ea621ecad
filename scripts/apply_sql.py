#!/usr/bin/env python3
"""Apply a SQL file to a ClickHouse HTTP endpoint, one statement per request.

Usage: apply_sql.py URL FILE...   (URL like http://127.0.0.1:8123; user/password from
CLICKHOUSE_USER / CLICKHOUSE_PASSWORD). Stops at the first failing statement, naming it.
"""
import base64
import os
import sys
import urllib.error
import urllib.request


def statements(text):
    """Split on `;` outside quotes, identifiers and comments; drop empty statements."""
    out, current, i, quote = [], [], 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\":
                current.append(text[i + 1: i + 2])
                i += 1
            elif ch == quote:
                quote = None
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i)
            i = len(text) if end < 0 else end + 2
            continue
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif ch == ";":
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current).strip())
    return [s for s in out if s]


def main():
    url, files = sys.argv[1], sys.argv[2:]
    headers = {}
    if os.environ.get("CLICKHOUSE_USER"):
        token = f"{os.environ['CLICKHOUSE_USER']}:{os.environ.get('CLICKHOUSE_PASSWORD', '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
    count = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for sql in statements(f.read()):
                request = urllib.request.Request(url + "/", data=sql.encode(), headers=headers)
                try:
                    urllib.request.urlopen(request, timeout=60).read()
                except urllib.error.HTTPError as e:
                    first = sql.splitlines()[0]
                    sys.exit(f"{path}: statement failed: {first} ...\n{e.read().decode().strip()}")
                count += 1
    print(f"applied {count} statements from {', '.join(files)}", file=sys.stderr)


if __name__ == "__main__":
    main()
