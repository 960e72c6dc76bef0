//! The `/metrics` endpoint: a small HTTP/1 server on the command's tokio runtime. It only reads
//! the shared metrics (a short lock to encode them); the sampler thread never waits for it.
//!
//! It is exposed (the packaged unit binds every interface), so it must not be a way to starve
//! udamon of descriptors or CPU: at most `MAX_CONNECTIONS` at once (more are accepted and closed
//! at once), a client has `HEADER_TIMEOUT` to send a request's head and a connection lives at
//! most `CONNECTION_TIMEOUT`, and a failing accept (EMFILE) backs off instead of spinning.

use std::{
    convert::Infallible,
    net::{SocketAddr, ToSocketAddrs as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};

use super::{CONTENT_TYPE, Metrics};

pub type Shared = Arc<Mutex<Metrics>>;

/// What the endpoint serves: a text exposition of the metrics now.
pub trait Exposition: Send + 'static {
    fn encode(&self) -> String;
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// Far more than the scrapers of one host; each costs a descriptor.
pub const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failing accept waits before trying again, at first and at most.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// `PORT`, `:PORT`, `HOST:PORT` or `[V6]:PORT`; without a host, loopback only.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    let bad = || anyhow!("--metrics `{text}`: expected [HOST:]PORT, e.g. 9464 or 0.0.0.0:9464");
    let with_host = match text.strip_prefix(':').unwrap_or(text) {
        port if port.parse::<u16>().is_ok() => format!("127.0.0.1:{port}"),
        _ => text.to_owned(),
    };
    with_host.to_socket_addrs().map_err(|_| bad())?.next().ok_or_else(bad)
}

/// Binds `addr` now (so a taken port is an error before monitoring starts) and serves
/// `/metrics` from `metrics` on the current runtime until the runtime ends.
pub async fn serve<M: Exposition>(addr: SocketAddr, metrics: Arc<Mutex<M>>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("--metrics {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept(listener, metrics));
    Ok(bound)
}

async fn accept<M: Exposition>(listener: TcpListener, metrics: Arc<Mutex<M>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Failures come in spells while descriptors are short, each freed one ending a spell: said
    // once in all, and the wait doubles while a spell lasts.
    let mut said = false;
    let mut backoff: Option<Duration> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                if !std::mem::replace(&mut said, true) {
                    say!("udamon: metrics: cannot accept a connection: {err}; retrying");
                }
                let wait = backoff.map_or(BACKOFF.0, |wait| (wait * 2).min(BACKOFF.1));
                backoff = Some(wait);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff = None;
        // Over the cap: closed at once (dropped), which frees its descriptor.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            serve_connection(stream, metrics).await;
            drop(slot);
        });
    }
}

/// One client's requests on `io`, until it closes, errs or runs out of time.
pub(crate) async fn serve_connection<I, M>(io: I, metrics: Arc<Mutex<M>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Exposition,
{
    let service = service_fn(move |request| respond(request, metrics.clone()));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

async fn respond<B, M: Exposition>(
    request: Request<B>,
    metrics: Arc<Mutex<M>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    // HEAD gets GET's headers; hyper leaves the body out.
    let method = match request.method() {
        &Method::HEAD => &Method::GET,
        method => method,
    };
    Ok(match (method, request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let text = metrics.lock().map(|m| m.encode()).unwrap_or_default();
            response(StatusCode::OK, CONTENT_TYPE, text)
        }
        (&Method::GET, "/") => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">udamon metrics</a></body></html>\n".into(),
        ),
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_addr(":9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9464").unwrap(), "[::1]:9464".parse().unwrap());
        for bad in ["", "99999", "host", "1.2.3.4:x", "no such host:1"] {
            let err = parse_addr(bad).unwrap_err().to_string();
            assert!(err.contains("expected [HOST:]PORT"), "{bad}: {err}");
        }
    }
}
