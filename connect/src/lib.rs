//! clickstream-connect: how the sink and `clickstream-top` reach ClickHouse, in one place.
//!
//! - [`client`]: a `clickhouse::Client` for an `http://` or `https://` URL. HTTPS uses rustls
//!   (the ring provider, no OpenSSL) and trusts the system's CA certificates, or, with
//!   [`Tls::ca_file`], only the CA in that file (a private CA); a client certificate and key add
//!   mutual TLS. There is no switch that turns certificate checks off.
//! - [`connect`]: the client of a [`Connection`] (URL, TLS files, database, user, password or
//!   password file), as the sink and `clickstream-windows` configure it; [`setting_key`] names
//!   the setting an error is about.
//! - [`read_secret_file`]: a password from a file (Docker and Kubernetes secrets), without the
//!   trailing newline editors and `echo` leave.
//! - [`redact_url`] and [`has_credentials`]: URLs are logged without user, password or query,
//!   and credentials belong in their own settings, never in the URL.
//! - [`tls_failure`]: whether a client error is a TLS failure (the server's certificate not
//!   trusted, ours refused, TLS spoken to a plain port). No retry fixes those, so callers stop
//!   with an error that says what to change instead of retrying.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, ClientConfig, RootCertStore};

/// The TLS files of an `https://` connection; all optional (see [`client`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM file with the CA certificate(s) to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate (chain) for mutual TLS; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
}

/// Which file an error is about, so each program can name its own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFile {
    Ca,
    ClientCert,
    ClientKey,
    Password,
}

/// Why a client could not be built. Messages name the file, never a secret's content.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {path}: {source}")]
    Read {
        file: SecretFile,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { file: SecretFile, path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} is empty")]
    Empty { file: SecretFile, path: PathBuf },
    #[error("{path}: not a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("a client certificate needs its private key and the key its certificate")]
    Incomplete { missing: SecretFile },
    #[error("the client certificate and key are not usable together: {0}")]
    ClientCertificate(#[source] rustls::Error),
    #[error(
        "no system CA certificates found ({0}): install them (Debian: ca-certificates) or give \
         the CA file of the server's certificate"
    )]
    NoSystemRoots(String),
    #[error("TLS set-up: {0}")]
    Tls(#[source] rustls::Error),
}

impl ConnectError {
    /// The file the error is about, if it is about one.
    pub fn file(&self) -> Option<SecretFile> {
        match self {
            ConnectError::Read { file, .. }
            | ConnectError::NoCertificate { file, .. }
            | ConnectError::Empty { file, .. }
            | ConnectError::Incomplete { missing: file } => Some(*file),
            ConnectError::NoPrivateKey { .. } => Some(SecretFile::ClientKey),
            ConnectError::BadCa { .. } => Some(SecretFile::Ca),
            ConnectError::ClientCertificate(_) => Some(SecretFile::ClientCert),
            ConnectError::NoSystemRoots(_) => Some(SecretFile::Ca),
            ConnectError::Tls(_) => None,
        }
    }
}

/// How long an idle keep-alive connection may stay pooled: below ClickHouse's own keep-alive
/// timeout (3 s on older servers, 10 s since 23.11), as the `clickhouse` crate's default.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A client for `url` (no database, user or password set yet). For `https://` the TLS files
/// are read now, so a missing or unusable file fails here, naming it; for `http://` they are
/// not used.
pub fn client(url: &str, tls: &Tls) -> Result<Client, ConnectError> {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    if !is_https(url) {
        let pool = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(http);
        return Ok(with_compression(
            Client::with_http_client(pool).with_url(url),
        ));
    }
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(tls)?)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let pool = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https);
    Ok(with_compression(
        Client::with_http_client(pool).with_url(url),
    ))
}

/// LZ4 on the wire, said explicitly: the crate's default turns into none wherever its
/// `test-util` feature is on (in the sink's tests), and the tests should send what the
/// product sends.
fn with_compression(client: Client) -> Client {
    client.with_compression(clickhouse::Compression::Lz4)
}

/// What a program's settings say about reaching ClickHouse, under the setting names the sink
/// and `clickstream-windows` share (`clickhouse_url`, `clickhouse_ca_file`, ...). An empty
/// string is a setting left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    pub url: &'a str,
    pub database: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// A file holding the password (read now; it wins over `password`).
    pub password_file: &'a str,
    pub ca_file: &'a str,
    pub client_cert_file: &'a str,
    pub client_key_file: &'a str,
}

impl Connection<'_> {
    /// The first of these settings that cannot work, as (its key, why): a URL that is not
    /// HTTP(S) or carries credentials, a password given twice, half a client certificate.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(("clickhouse_url", "must start with http:// or https://"));
        }
        if has_credentials(self.url) {
            return Err((
                "clickhouse_url",
                "must not carry credentials (user:password@ or ?password=), which would show \
                 wherever the URL is logged: set clickhouse_user and clickhouse_password_file",
            ));
        }
        if !self.password.is_empty() && !self.password_file.is_empty() {
            return Err((
                "clickhouse_password_file",
                "set either it or `clickhouse_password`, not both",
            ));
        }
        match (
            self.client_cert_file.is_empty(),
            self.client_key_file.is_empty(),
        ) {
            (false, true) => Err((
                "clickhouse_client_key_file",
                "is needed with `clickhouse_client_cert_file`",
            )),
            (true, false) => Err((
                "clickhouse_client_cert_file",
                "is needed with `clickhouse_client_key_file`",
            )),
            _ => Ok(()),
        }
    }

    /// [`connect`], its error said as the setting to change (`invalid value for `key`: ...`).
    pub fn client(&self) -> Result<Client, String> {
        connect(self)
            .map_err(|error| format!("invalid value for `{}`: {error}", setting_key(&error)))
    }
}

/// The client a [`Connection`] describes: [`client`] with its TLS files, then its database,
/// user and password. TLS files given with a plain `http://` URL are not used (a warning
/// says so).
pub fn connect(connection: &Connection) -> Result<Client, ConnectError> {
    let file = |value: &str| (!value.is_empty()).then(|| PathBuf::from(value));
    let tls = Tls {
        ca_file: file(connection.ca_file),
        client_cert_file: file(connection.client_cert_file),
        client_key_file: file(connection.client_key_file),
    };
    if !is_https(connection.url) && tls != Tls::default() {
        tracing::warn!(
            clickhouse = %redact_url(connection.url),
            "TLS files are set but clickhouse_url is plain http://: they are not used"
        );
    }
    let password = if connection.password_file.is_empty() {
        connection.password.to_owned()
    } else {
        read_secret_file(Path::new(connection.password_file))?
    };
    let mut client = client(connection.url, &tls)?.with_database(connection.database);
    if !connection.user.is_empty() {
        client = client.with_user(connection.user);
    }
    Ok(if password.is_empty() {
        client
    } else {
        client.with_password(password)
    })
}

/// The setting (of a [`Connection`]) an error is about: `clickhouse_ca_file`, ...,
/// `clickhouse_url` when it is about no file.
pub fn setting_key(error: &ConnectError) -> &'static str {
    match error.file() {
        Some(SecretFile::Ca) => "clickhouse_ca_file",
        Some(SecretFile::ClientCert) => "clickhouse_client_cert_file",
        Some(SecretFile::ClientKey) => "clickhouse_client_key_file",
        Some(SecretFile::Password) => "clickhouse_password_file",
        None => "clickhouse_url",
    }
}

pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The rustls configuration for [`Tls`]: its CA or the system's, and its client certificate.
pub fn tls_config(tls: &Tls) -> Result<ClientConfig, ConnectError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for certificate in read_certificates(SecretFile::Ca, path)? {
                roots
                    .add(certificate)
                    .map_err(|source| ConnectError::BadCa {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = if found.errors.is_empty() {
                    "none in the system's certificate store".to_owned()
                } else {
                    found
                        .errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(ConnectError::NoSystemRoots(why));
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(ConnectError::Tls)?
            .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(SecretFile::ClientCert, cert)?;
            let key = read_private_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(ConnectError::ClientCertificate)
        }
        (Some(_), None) => Err(ConnectError::Incomplete {
            missing: SecretFile::ClientKey,
        }),
        (None, Some(_)) => Err(ConnectError::Incomplete {
            missing: SecretFile::ClientCert,
        }),
    }
}

fn read(file: SecretFile, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        file,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(
    file: SecretFile,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let pem = read(file, path)?;
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certificates.is_empty() {
        return Err(ConnectError::NoCertificate {
            file,
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnectError> {
    let pem = read(SecretFile::ClientKey, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| ConnectError::NoPrivateKey {
        path: path.to_path_buf(),
    })
}

/// A secret (a password) from a file: its content without trailing line breaks. An empty
/// file is an error: a secret mounted empty is a deployment mistake, not "no password".
pub fn read_secret_file(path: &Path) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::Read {
        file: SecretFile::Password,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConnectError::Empty {
            file: SecretFile::Password,
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_owned())
}

/// The URL without what may be secret: user, password, query (ClickHouse takes `?password=`)
/// and fragment. What is left (scheme, host, port, path) is safe to log.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let origin = parsed.origin().ascii_serialization();
            match parsed.path() {
                "" | "/" => origin,
                path => format!("{origin}{path}"),
            }
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Whether the URL carries credentials (`user:password@`, or `user` / `password` in the
/// query), which would end up wherever the URL is shown.
pub fn has_credentials(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(parsed) => {
            !parsed.username().is_empty()
                || parsed.password().is_some()
                || parsed
                    .query_pairs()
                    .any(|(key, _)| matches!(key.as_ref(), "user" | "password" | "access_token"))
        }
        Err(_) => url.contains('@'),
    }
}

/// A TLS failure of a connection, by what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate is not trusted (unknown CA, expired, wrong name, ...).
    ServerCertificate(String),
    /// The server refused the client certificate (none sent, or one it does not trust).
    ClientCertificate(String),
    /// Any other handshake failure (e.g. TLS spoken to a plain-HTTP port).
    Handshake(String),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFailure::ServerCertificate(detail) => {
                write!(f, "the server's certificate is not trusted: {detail}")
            }
            TlsFailure::ClientCertificate(detail) => {
                write!(f, "the server refused the client certificate: {detail}")
            }
            TlsFailure::Handshake(detail) => write!(f, "the TLS handshake failed: {detail}"),
        }
    }
}

/// The TLS failure somewhere in `error`'s chain of sources, if any.
pub fn tls_failure(error: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(failure) = rustls_error(error) {
            return Some(match failure {
                rustls::Error::InvalidCertificate(detail) => {
                    TlsFailure::ServerCertificate(format!("{detail:?}"))
                }
                rustls::Error::AlertReceived(
                    alert @ (AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateRequired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::AccessDenied),
                ) => TlsFailure::ClientCertificate(format!("alert {alert:?}")),
                other => TlsFailure::Handshake(other.to_string()),
            });
        }
        next = error.source();
    }
    None
}

/// The rustls error `error` is, or wraps in (nested) io::Errors: std's io::Error skips its
/// inner error in `source()`, and the HTTP client wraps a failed handshake twice.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    let inner: &(dyn StdError + 'static) = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// `error` and its sources, joined by ": " (a source already quoted by the one before it is
/// left out). Network errors of the HTTP client say only "client error (Connect)" on their own.
pub fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_described_once_with_the_sources_it_does_not_say() {
        #[derive(Debug)]
        struct Error(&'static str, Option<Box<Error>>);
        impl std::fmt::Display for Error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Error {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let inner = || Some(Box::new(Error("inner", None)));
        assert_eq!(describe(&Error("outer: inner", inner())), "outer: inner");
        assert_eq!(describe(&Error("outer", inner())), "outer: inner");
    }

    #[test]
    fn a_connection_that_cannot_work_names_the_setting() {
        let fine = Connection {
            url: "https://ch:8443",
            ..Connection::default()
        };
        assert_eq!(fine.check(), Ok(()));
        let cases = [
            (
                Connection {
                    url: "ch:8123",
                    ..fine
                },
                "clickhouse_url",
            ),
            (
                Connection {
                    url: "https://u:pw@ch:8443",
                    ..fine
                },
                "clickhouse_url",
            ),
            (
                Connection {
                    password: "p",
                    password_file: "/run/p",
                    ..fine
                },
                "clickhouse_password_file",
            ),
            (
                Connection {
                    client_cert_file: "c.pem",
                    ..fine
                },
                "clickhouse_client_key_file",
            ),
            (
                Connection {
                    client_key_file: "k.pem",
                    ..fine
                },
                "clickhouse_client_cert_file",
            ),
        ];
        for (connection, key) in cases {
            assert_eq!(
                connection.check().map_err(|(k, _)| k),
                Err(key),
                "{connection:?}"
            );
        }
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        for (url, logged) in [
            ("https://ch.example.com:8443", "https://ch.example.com:8443"),
            ("http://u:secret@ch:8123/", "http://ch:8123"),
            (
                "https://ch:8443/?user=u&password=secret&database=x",
                "https://ch:8443",
            ),
            (
                "http://ch:8123/prefix?password=secret",
                "http://ch:8123/prefix",
            ),
            ("not a url secret", "<not a URL>"),
        ] {
            assert_eq!(redact_url(url), logged, "{url}");
            assert!(!redact_url(url).contains("secret"));
        }
        assert!(has_credentials("http://u:secret@ch:8123"));
        assert!(has_credentials("http://u@ch:8123"));
        assert!(has_credentials("https://ch:8443/?password=secret"));
        assert!(!has_credentials("https://ch:8443/?database=clickstream"));
        assert!(!has_credentials("http://localhost:8123"));
    }

    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("connect-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn secret_files_lose_their_trailing_newline_only() {
        let path = temp_file("password", b"  s3cret with spaces \r\n\n");
        assert_eq!(read_secret_file(&path).unwrap(), "  s3cret with spaces ");
        let empty = temp_file("empty", b"\n");
        let error = read_secret_file(&empty).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
        let missing = read_secret_file(Path::new("/nonexistent/password")).unwrap_err();
        assert_eq!(missing.file(), Some(SecretFile::Password));
        assert!(missing.to_string().contains("/nonexistent/password"));
    }

    #[test]
    fn unusable_tls_files_are_named() {
        let not_pem = temp_file("ca.pem", b"this is not a certificate");
        let cases = [
            (
                Tls {
                    ca_file: Some(not_pem.clone()),
                    ..Tls::default()
                },
                SecretFile::Ca,
                "holds no PEM certificate",
            ),
            (
                Tls {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..Tls::default()
                },
                SecretFile::Ca,
                "cannot read /nonexistent/ca.pem",
            ),
            (
                Tls {
                    client_cert_file: Some(not_pem.clone()),
                    ..Tls::default()
                },
                SecretFile::ClientKey,
                "needs its private key",
            ),
        ];
        for (tls, file, message) in cases {
            let error = client("https://127.0.0.1:8443", &tls)
                .err()
                .unwrap_or_else(|| panic!("{tls:?} was accepted"));
            assert_eq!(error.file(), Some(file), "{error}");
            assert!(error.to_string().contains(message), "{error}");
        }
        // Plain HTTP does not read the TLS files.
        let tls = Tls {
            ca_file: Some(not_pem),
            ..Tls::default()
        };
        assert!(client("http://127.0.0.1:8123", &tls).is_ok());
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let unknown_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper-rustls reports it: an io::Error in an io::Error.
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            unknown_ca,
        ));
        assert!(matches!(
            tls_failure(&wrapped),
            Some(TlsFailure::ServerCertificate(detail)) if detail.contains("UnknownIssuer")
        ));
        let refused = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(matches!(
            tls_failure(&refused),
            Some(TlsFailure::ClientCertificate(_))
        ));
        let refused = std::io::Error::other("connection refused");
        assert_eq!(tls_failure(&refused), None);
    }
}
