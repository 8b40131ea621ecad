//! The HTTP endpoint of the sink, the producer and the window publisher: `/metrics` in the
//! Prometheus text format ([`metrics`]) plus the routes each program adds (`/health`, the
//! sink's `/ready`), served by [`serve`] until the program stops it.
//!
//! Each program names its own setting in the error of a failed bind (`http_addr`,
//! `--metrics-addr`), so [`serve`] returns the plain I/O error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::{TcpListener, ToSocketAddrs};

/// A router answering `GET /metrics` with `render()` (the registry, encoded on each scrape);
/// `S`: the state of the routes the program adds.
pub fn metrics<S, F>(render: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { render() }
        }),
    )
}

/// Binds `addr` (port 0 picks a free one) and serves `app` in the background until `stop`
/// completes; returns the bound address. An error of the running server is logged: the
/// program goes on without its endpoint rather than stopping its work.
pub async fn serve<A, S>(addr: A, app: Router, stop: S) -> io::Result<SocketAddr>
where
    A: ToSocketAddrs,
    S: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %error, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_the_rendered_registry_and_added_routes_until_stopped() {
        let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = scrapes.clone();
        let render = move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            format!("scrapes_total {n}\n")
        };
        let app = metrics(render).route("/health", get(|| async { "ok\n" }));
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = serve("127.0.0.1:0", app, async move {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
        assert_ne!(addr.port(), 0);
        let first = get_path(addr, "/metrics").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.ends_with("scrapes_total 1\n"), "{first}");
        // Rendered again on each scrape, not once.
        assert!(
            get_path(addr, "/metrics")
                .await
                .ends_with("scrapes_total 2\n")
        );
        assert!(get_path(addr, "/health").await.ends_with("ok\n"));
        assert!(get_path(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
        drop(stop);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = serve(addr, metrics(String::new), std::future::pending())
            .await
            .expect_err("in use");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
