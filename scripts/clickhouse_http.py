#!/usr/bin/env python3
"""A ClickHouse-compatible HTTP endpoint over the in-process ClickHouse engine (chDB).

For machines without Docker or a ClickHouse server. The engine does all the work
(parsing, formats, MergeTree, materialized views, deduplication); this file only
carries requests, data and errors the way ClickHouse's HTTP interface does:

- GET / and /ping answer "Ok."; the query comes from the `query` URL parameter
  and/or the body (ClickHouse joins them with a newline), or from a
  multipart/form-data body (the `clickhouse` crate sends `param_*` that way).
- `database`, `default_format`, `param_*`, `session_id`; any other URL parameter
  that is not an HTTP-interface parameter is applied as a setting of that query.
- INSERT data in the body in any input format the engine reads, request bodies
  compressed with ClickHouse block framing (`decompress=1`, checksums verified)
  or with Content-Encoding (gzip, deflate, lz4, zstd where available).
- Responses compressed with block framing for `compress=1`, with
  Content-Encoding when `enable_http_compression=1` and the client accepts it,
  plain otherwise.
- Errors: ClickHouse's status code for the exception, body
  `Code: N. DB::Exception: ...`, header `X-ClickHouse-Exception-Code: N`.

Fault injection, for the sink's fault tests only (nothing happens unless a test asks):
POST /_faults with a JSON rule {"match": "db.events", "settings": {"max_memory_usage": "8000000"},
"error_code": 243, "error_name": "NOT_ENOUGH_SPACE", "count": 5}: INSERTs whose statement
contains `match` run with those settings (the engine then fails as ClickHouse would), and the
next `count` of them (-1: all) fail with that error instead. With "queries": true the rule
applies to any other statement containing `match` (and, if given, sent for "database"), and
"delay_ms" holds its answer back (a hanging server). With "discard": true, INSERTs whose
statement contains `match` are read and answered as written without being decompressed or
run (the benchmark's measure of the sink alone). DELETE /_faults?match=... clears.

HTTPS: with --tls-port, --tls-cert and --tls-key the same endpoint is also served over TLS
on a second port (scripts/stack makes a private CA for it, scripts/tls_certs.py); with
--tls-client-ca a client certificate is checked against that CA when one is presented
(mutual TLS: a certificate from another CA is refused in the handshake).

Users: the engine has none (everything runs as `default`). With --password-file USER=FILE
(repeatable) requests that name USER (X-ClickHouse-User/-Key headers, HTTP basic auth, or
`user`/`password` URL parameters) must carry the password in FILE, and requests naming any
other user than `default` are refused: ClickHouse's own answer, Code 516
AUTHENTICATION_FAILED with HTTP 403. Requests as `default` (or naming no user) stay open.
The statements of those users are kept (the last 20,000, in memory; the engine has no
query_log): GET /_queries?user=U&database=D returns them as a JSON list, for the test that
checks clickhouse/users.sql's grants against what the sink runs.

Usage: clickhouse_http.py --port 8123 --data-dir DIR [--host 127.0.0.1]
           [--tls-port 8443 --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
           [--password-file USER=FILE ...]
"""

import argparse
import base64
import collections
import gzip
import http.server
import json
import os
import re
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

import lz4.block
import lz4.frame
from chdb import state
from clickhouse_cityhash.cityhash import CityHash128

try:  # zstd is optional: Python 3.14 has it, older ones may have the backport
    from backports import zstd  # type: ignore
except ImportError:  # pragma: no cover
    zstd = None

# Parameters of the HTTP interface itself, not settings of the query.
HTTP_PARAMS = {
    "query", "database", "default_format", "decompress", "compress", "user",
    "password", "quota_key", "query_id", "session_id", "session_timeout",
    "session_check", "buffer_size", "wait_end_of_query", "role",
    "client_protocol_version", "stacktrace", "http_response_buffer_size",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
}
# ClickHouse's HTTP status for an exception (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp),
# by error name; codes are resolved from the engine's own system.errors at start.
STATUS_BY_ERROR_NAME = {
    401: ["REQUIRED_PASSWORD"],
    403: ["UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"],
    400: ["BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
          "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
          "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
          "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
          "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
          "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
          "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"],
    404: ["UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
          "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
          "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"],
    413: ["QUERY_IS_TOO_LARGE"],
    501: ["NOT_IMPLEMENTED"],
    503: ["SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"],
    411: ["HTTP_LENGTH_REQUIRED"],
    408: ["TIMEOUT_EXCEEDED"],
    415: ["UNSUPPORTED_MEDIA_TYPE"],
}
CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8",
}
# `INSERT INTO ... FORMAT name` or `INSERT INTO ... VALUES`: the data follows.
INSERT_WITH_DATA = re.compile(
    rb"^\s*(?P<head>INSERT\s+INTO\s.*?)\s(?:FORMAT\s+(?P<format>\w+)|(?P<values>VALUES))(?=\s|\(|$)",
    re.IGNORECASE | re.DOTALL,
)
TRAILING_FORMAT = re.compile(r"\sFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
CODE_IN_MESSAGE = re.compile(r"Code: (\d+)\.")
# ClickHouse compressed-block framing: 16-byte CityHash128, method byte,
# UInt32 compressed size (with the 9-byte header), UInt32 uncompressed size.
METHOD_NONE, METHOD_LZ4, METHOD_ZSTD = 0x02, 0x82, 0x90
MAX_ERROR_SCAN = 1 << 16


class ClickHouseError(Exception):
    """An error to send the way ClickHouse does: its code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def make_error(codes, name, text):
    code = codes.get(name, 1001)
    return ClickHouseError(code, f"Code: {code}. DB::Exception: {text}. ({name})")


def error_from_engine(exc):
    message = str(exc)
    for prefix in ("Streaming insert finish failed: ", "Streaming insert append failed: "):
        message = message.replace(prefix, "")
    match = CODE_IN_MESSAGE.search(message)
    if match:
        return ClickHouseError(int(match.group(1)), message[match.start():])
    return ClickHouseError(1001, f"Code: 1001. DB::Exception: {message}. (STD_EXCEPTION)")


def checksum(block):
    value = CityHash128(block)
    return struct.pack("<QQ", value >> 64, value & 0xFFFFFFFFFFFFFFFF)


def decompress_blocks(data, codes):
    """Decode a body of ClickHouse compressed blocks (request with decompress=1)."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 25:
            raise make_error(codes, "CANNOT_DECOMPRESS", "Truncated compressed block")
        method = data[pos + 16]
        compressed_size, size = struct.unpack_from("<II", data, pos + 17)
        block = data[pos + 16: pos + 16 + compressed_size]
        if len(block) != compressed_size:
            raise make_error(codes, "CANNOT_DECOMPRESS", "Truncated compressed block")
        if checksum(block) != data[pos: pos + 16]:
            raise make_error(codes, "CHECKSUM_DOESNT_MATCH", "Checksum doesn't match: corrupted data")
        payload = block[9:]
        if method == METHOD_LZ4:
            out.append(lz4.block.decompress(payload, uncompressed_size=size))
        elif method == METHOD_NONE:
            out.append(payload)
        elif method == METHOD_ZSTD and zstd is not None:
            out.append(zstd.decompress(payload))
        else:
            raise make_error(codes, "UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method: {method:#x}")
        pos += 16 + compressed_size
    return b"".join(out)


def compress_blocks(data, block_size=1 << 20):
    out = []
    for start in range(0, max(len(data), 1), block_size):
        chunk = data[start: start + block_size]
        payload = lz4.block.compress(chunk, store_size=False)
        header = struct.pack("<BII", METHOD_LZ4, len(payload) + 9, len(chunk))
        block = header + payload
        out.append(checksum(block) + block)
    return b"".join(out)


def decode_content_encoding(body, encoding, codes):
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        return lz4.frame.decompress(body)
    if encoding == "zstd" and zstd is not None:
        return zstd.decompress(body)
    raise make_error(codes, "UNKNOWN_COMPRESSION_METHOD", f"Unknown HTTP Content-Encoding: {encoding}")


def encode_content(body, accept):
    """Pick a Content-Encoding the client accepts (enable_http_compression=1)."""
    accepted = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    if "lz4" in accepted:
        return "lz4", lz4.frame.compress(body)
    if "zstd" in accepted and zstd is not None:
        return "zstd", zstd.compress(body)
    if "gzip" in accepted:
        return "gzip", gzip.compress(body, compresslevel=3)
    if "deflate" in accepted:
        return "deflate", zlib.compress(body, 3)
    return None, body


def sql_literal(value):
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_multipart(body, content_type):
    """Fields of a multipart/form-data body: {name: text}."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    boundary = b"--" + match.group(1).encode()
    fields = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return {key: value.decode("utf-8") for key, value in fields.items()}


class Engine:
    """The chDB engine at one data dir; a connection per request or per session."""

    def __init__(self, path):
        self.path = path
        # Held open for the server's lifetime so the engine is not restarted per request.
        self.anchor = state.connect(path)
        self.sessions = {}
        self.sessions_lock = threading.Lock()
        self.passwords = {}  # user -> password (--password-file)
        self.statements = collections.deque(maxlen=20000)  # (user, database, statement) of those users
        self.faults = {}  # match -> rule (see the module docstring)
        self.faults_lock = threading.Lock()
        self.spool_dir = os.path.join(path, "http_spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        rows = self.anchor.query(
            "SELECT DISTINCT name, code FROM system.errors SETTINGS system_events_show_zero_values = 1",
            "TabSeparated").bytes().decode()
        self.codes = {name: int(code) for name, code in (line.split("\t") for line in rows.splitlines())}
        self.version = self.anchor.query("SELECT version()", "TabSeparated").bytes().decode().strip()
        self.status_by_code = {
            self.codes[name]: status
            for status, names in STATUS_BY_ERROR_NAME.items() for name in names if name in self.codes
        }

    def fault_for(self, statement, database=None, insert=True):
        """The injected settings and error (or None) for a statement; sleeps its delay."""
        with self.faults_lock:
            rules = list(self.faults.items())
        for match, rule in rules:
            if insert == bool(rule.get("queries")) or match not in statement:
                continue
            if rule.get("database") and rule["database"] != database:
                continue
            if rule.get("delay_ms"):
                time.sleep(int(rule["delay_ms"]) / 1000)
            error = None
            with self.faults_lock:
                if rule.get("error_code") and rule.get("count", 0) != 0:
                    if rule["count"] > 0:
                        rule["count"] -= 1
                    code = int(rule["error_code"])
                    name = rule.get("error_name", "INJECTED_FAULT")
                    error = ClickHouseError(code, f"Code: {code}. DB::Exception: injected fault for {match}. ({name})")
            return rule.get("settings") or {}, error
        return {}, None

    def discards(self, statement):
        """Whether an INSERT statement is to be read and dropped (a "discard" rule)."""
        with self.faults_lock:
            return any(rule.get("discard") and match in statement for match, rule in self.faults.items())

    def spool(self, data):
        """Writes INSERT data to a file the engine reads with FROM INFILE; returns its path."""
        path = os.path.join(self.spool_dir, f"{uuid.uuid4().hex}.bin")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def connection(self, session_id, timeout):
        """A (connection, release) pair: a fresh connection, or the session's own."""
        if not session_id:
            conn = state.connect(self.path)
            return conn, conn.close
        with self.sessions_lock:
            now = time.monotonic()
            for key, (conn, lock, deadline) in list(self.sessions.items()):
                if deadline < now and lock.acquire(blocking=False):
                    del self.sessions[key]
                    conn.close()
            conn, lock, _ = self.sessions.get(session_id) or (state.connect(self.path), threading.Lock(), 0)
            if not lock.acquire(blocking=False):
                raise make_error(self.codes, "SESSION_IS_LOCKED",
                                 f"Session {session_id} is locked by a concurrent client")
            self.sessions[session_id] = (conn, lock, now + timeout)
        return conn, lock.release


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-chDB"
    engine: Engine = None  # set by main()

    def log_message(self, fmt, *args):  # quiet: one line per error only
        pass

    # --- HTTP plumbing -------------------------------------------------------------

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status, body, headers=None, content_type="text/plain; charset=UTF-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_like_clickhouse(self, error):
        code, message = error.code, str(error)
        if "(version " not in message:
            message += f" (version {self.engine.version})"
        status = self.engine.status_by_code.get(code, 500)
        self.send(status, (message.rstrip() + "\n").encode(), {"X-ClickHouse-Exception-Code": str(code)})

    # --- users ---------------------------------------------------------------------

    def credentials(self, params):
        """(user, password) the request names, the way ClickHouse reads them."""
        user = self.headers.get("X-ClickHouse-User")
        password = self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization") or ""
        if user is None and auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
        if user is None:
            user, password = params.get("user"), params.get("password")
        return user or "default", password or ""

    def authenticated(self, params):
        """Checks the request's user against --password-file; answers 516 and returns False
        when it does not pass."""
        self.checked_user = None
        passwords = self.engine.passwords
        if not passwords:
            return True
        user, password = self.credentials(params)
        if user == "default" and user not in passwords:
            return True
        if passwords.get(user) == password:
            self.checked_user = user
            return True
        self.send_error_like_clickhouse(make_error(
            self.engine.codes, "AUTHENTICATION_FAILED",
            f"{user}: Authentication failed: password is incorrect, or there is no user with such name"))
        return False

    # --- requests ------------------------------------------------------------------

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/", "/ping", "/replicas_status") and "query" not in params:
            self.send(200, b"Ok.\n")
            return
        if url.path == "/_queries":
            statements = [s for (u, d, s) in list(self.engine.statements)
                          if u == params.get("user") and d == params.get("database")]
            self.send(200, json.dumps(statements).encode(), content_type="application/json")
            return
        if not self.authenticated(params):
            return
        self.handle_query(params, b"")

    def do_HEAD(self):
        self.send(200, b"")

    def do_DELETE(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path != "/_faults":
            self.send(404, b"not found\n")
            return
        with self.engine.faults_lock:
            self.engine.faults.pop(params.get("match", ""), None)
        self.send(200, b"Ok.\n")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/_faults":
            rule = json.loads(self.read_body() or b"{}")
            with self.engine.faults_lock:
                self.engine.faults[rule["match"]] = rule
            self.send(200, b"Ok.\n")
            return
        raw = self.read_body()
        if not self.authenticated(params):
            return
        query = params.get("query", "")
        if self.engine.faults and query.lstrip()[:6].upper() == "INSERT" and self.engine.discards(query):
            self.send(200, b"", {"X-ClickHouse-Summary": json.dumps({"written_rows": "0", "written_bytes": str(len(raw))})})
            return
        try:
            body = decode_content_encoding(raw, self.headers.get("Content-Encoding"), self.engine.codes)
        except ClickHouseError as error:
            self.send_error_like_clickhouse(error)
            return
        except (OSError, ValueError, RuntimeError) as error:
            self.send_error_like_clickhouse(
                make_error(self.engine.codes, "CANNOT_DECOMPRESS", f"Cannot decompress request body: {error}"))
            return
        content_type = self.headers.get("Content-Type") or ""
        if content_type.startswith("multipart/form-data"):
            fields = parse_multipart(body, content_type)
            params.update(fields)
            body = b""
        self.handle_query(params, body)

    def handle_query(self, params, body):
        engine = self.engine
        try:
            if params.get("decompress") in ("1", "true"):
                body = decompress_blocks(body, engine.codes)
            timeout = float(params.get("session_timeout") or 60)
            conn, release = engine.connection(params.get("session_id"), timeout)
        except ClickHouseError as error:
            self.send_error_like_clickhouse(error)
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        settings = {k: v for k, v in params.items() if k not in HTTP_PARAMS and not k.startswith("param_")}
        query_params = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        started = time.monotonic()
        try:
            if params.get("database"):
                conn.query(f"USE `{params['database']}`")
            for key, value in settings.items():
                conn.query(f"SET {key} = {sql_literal(value)}")
            try:
                result = self.execute(conn, params, body, query_params)
            finally:
                if params.get("session_id"):
                    for key in settings:  # URL settings apply to one query, not to the session
                        conn.query(f"SET {key} = DEFAULT")
        except ClickHouseError as error:
            self.send_error_like_clickhouse(error)
            return
        except Exception as error:  # the engine's exceptions: carry them as ClickHouse does
            self.send_error_like_clickhouse(error_from_engine(error))
            return
        finally:
            release()
        data, fmt, summary = result
        summary["elapsed_ns"] = str(int((time.monotonic() - started) * 1e9))
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "chdb",
            "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
        }
        if params.get("session_id"):
            headers["X-ClickHouse-Session-Id"] = params["session_id"]
        if params.get("compress") in ("1", "true"):
            data = compress_blocks(data)
        elif settings.get("enable_http_compression") in ("1", "true"):
            encoding, data = encode_content(data, self.headers.get("Accept-Encoding"))
            if encoding:
                headers["Content-Encoding"] = encoding
        content_type = CONTENT_TYPES.get(fmt.lower(), "application/octet-stream")
        self.send(200, data, headers, content_type)

    def log_statement(self, params, statement):
        if getattr(self, "checked_user", None):
            self.engine.statements.append((self.checked_user, params.get("database", ""), statement.strip()))

    def execute(self, conn, params, body, query_params):
        """Run the request's statement; returns (response bytes, format, summary)."""
        query = params.get("query", "").encode()
        match = INSERT_WITH_DATA.match(query or body[:MAX_ERROR_SCAN])
        if match:
            head = match.group("head").decode()
            self.log_statement(params, head)
            fmt = (match.group("format") or b"Values").decode()
            rest = (query or body)[match.end():]
            if query:
                data = rest + (b"\n" + body if rest.strip() else body)
            else:
                data = rest
            if match.group("format"):
                data = re.sub(rb"^[ \t]*\r?\n?", b"", data, count=1)
            # Through the engine's query path (INSERT ... FROM INFILE), not its streaming
            # inserter: the latter was seen to drop rows violating a CHECK constraint while
            # reporting them written; the query path raises the error as ClickHouse does.
            parts = re.split(r"\sSETTINGS\s", head, maxsplit=1, flags=re.IGNORECASE)
            table_part, settings_part = parts[0], (parts[1] if len(parts) > 1 else "")
            fault_settings, fault = self.engine.fault_for(table_part)
            if fault:
                raise fault
            for key, value in fault_settings.items():
                conn.query(f"SET {key} = {sql_literal(value)}")
            path = self.engine.spool(data)
            try:
                sql = f"{table_part} FROM INFILE '{path}'"
                if settings_part:
                    sql += f" SETTINGS {settings_part}"
                done = conn.query(f"{sql} FORMAT {fmt}", "TabSeparated")
            finally:
                os.unlink(path)
            summary = {"read_rows": "0", "read_bytes": "0", "written_rows": str(done.rows_written()),
                       "written_bytes": str(done.bytes_written()), "total_rows_to_read": "0",
                       "result_rows": "0", "result_bytes": "0"}
            return b"", fmt, summary
        text = (query + (b"\n" + body if body else b"")) if query else body
        sql = text.decode("utf-8")
        if not sql.strip():
            raise make_error(self.engine.codes, "SYNTAX_ERROR", "Empty query")
        self.log_statement(params, sql)
        if self.engine.faults:
            _, fault = self.engine.fault_for(sql, params.get("database"), insert=False)
            if fault:
                raise fault
        explicit = TRAILING_FORMAT.search(sql)
        fmt = explicit.group(1) if explicit else params.get("default_format") or "TabSeparated"
        result = conn.query(sql, fmt, params=query_params) if query_params else conn.query(sql, fmt)
        data = result.bytes()
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written()),
                   "total_rows_to_read": str(result.rows_read()), "result_rows": "0",
                   "result_bytes": str(len(data))}
        return data, fmt, summary


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError)):
            # A refused handshake (an untrusted client certificate, a client that does not
            # trust ours) or a client gone: one line, not a traceback.
            print(f"clickhouse_http: {client_address[0]}:{client_address[1]}: {error}", file=sys.stderr)
            return
        super().handle_error(request, client_address)


def tls_context(cert, key, client_ca):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def read_passwords(pairs):
    passwords = {}
    for pair in pairs:
        user, sep, path = pair.partition("=")
        if not sep or not user or not path:
            sys.exit(f"clickhouse_http: --password-file {pair!r}: expected USER=FILE")
        with open(path, encoding="utf-8") as f:
            passwords[user] = f.read().rstrip("\r\n")
    return passwords


def listen(host, port, context=None):
    try:
        server = Server((host, port), Handler)
    except OSError as error:
        print(f"clickhouse_http: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        sys.exit(2)
    if context is not None:
        # The handshake happens in the request's thread (at its first read), so a slow or
        # refused client never holds up the accept loop.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--data-dir", required=True, help="where the engine keeps its data")
    parser.add_argument("--tls-port", type=int, help="also serve HTTPS on this port")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) for HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for HTTPS")
    parser.add_argument("--tls-client-ca", help="check client certificates against this CA")
    parser.add_argument("--password-file", action="append", default=[], metavar="USER=FILE",
                        help="USER must send the password in FILE (repeatable)")
    args = parser.parse_args()
    if args.tls_port and not (args.tls_cert and args.tls_key):
        sys.exit("clickhouse_http: --tls-port needs --tls-cert and --tls-key")
    started = time.monotonic()
    context = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_port else None
    Handler.engine = Engine(args.data_dir)
    Handler.engine.passwords = read_passwords(args.password_file)
    server = listen(args.host, args.port)
    where = f"http://{args.host}:{args.port}"
    if context is not None:
        tls_server = listen(args.host, args.tls_port, context)
        threading.Thread(target=tls_server.serve_forever, name="https", daemon=True).start()
        where += f" and https://{args.host}:{args.tls_port}"
    users = f", password checked for {', '.join(sorted(Handler.engine.passwords))}" if Handler.engine.passwords else ""
    print(f"clickhouse_http: ClickHouse {Handler.engine.version} (chDB) on {where}, "
          f"data in {args.data_dir}{users}, ready in {time.monotonic() - started:.2f}s", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
