//! The `/metrics` endpoint: a small HTTP/1 server on the command's tokio runtime. It only reads
//! the shared metrics (a short lock to encode them); the sampler thread never waits for it.

use std::{
    convert::Infallible,
    net::{SocketAddr, ToSocketAddrs as _},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, anyhow};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{CONTENT_TYPE, Metrics};

pub type Shared = Arc<Mutex<Metrics>>;

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
pub async fn serve(addr: SocketAddr, metrics: Shared) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("--metrics {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(request, metrics.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn respond<B>(
    request: Request<B>,
    metrics: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    Ok(match (request.method(), request.uri().path()) {
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
