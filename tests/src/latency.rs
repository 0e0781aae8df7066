//! Network latency for benchmarks, as a model of what loopback lacks: real AWS endpoints answer
//! after milliseconds of round trip (and answer many requests at once), and RDS sits a network
//! hop away. Both add waiting, not work: they cost no CPU on this machine.

use aws_smithy_runtime_api::client::http::{http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// pgjit's HTTPS client with `delay` added before every request is sent.
pub fn delayed_http_client(delay: Duration) -> SharedHttpClient {
    let inner = pgjit::aws::https_client();
    http_client_fn(move |settings, components| {
        use aws_smithy_runtime_api::client::http::HttpClient;
        SharedHttpConnector::new(Delayed { inner: inner.http_connector(settings, components), delay })
    })
}

#[derive(Debug)]
struct Delayed {
    inner: SharedHttpConnector,
    delay: Duration,
}

impl HttpConnector for Delayed {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (inner, delay) = (self.inner.clone(), self.delay);
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(delay).await;
            inner.call(request).await
        })
    }
}

/// Relays both ways between two sockets, each byte `one_way` after it came, without slowing the
/// bytes behind it: a link of fixed latency (a round trip costs twice that), not a slow one.
/// [`crate::Proxy::with_latency`] puts it in front of a server.
pub(crate) async fn carry_both_ways(inbound: tokio::net::TcpStream, outbound: tokio::net::TcpStream, one_way: Duration) {
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(carry(in_read, out_write, one_way), carry(out_read, in_write, one_way));
}

/// Reads as bytes come and writes each chunk `one_way` after it was read.
async fn carry(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, one_way: Duration) {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || sender.send((Instant::now() + one_way, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round trip through the link takes twice the one-way latency, bytes intact and in order,
    /// and chunks sent back to back are not delayed one after the other.
    #[tokio::test]
    async fn a_proxy_with_latency_delays_each_way_without_queueing_chunks() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let one_way = Duration::from_millis(100);
        let link = crate::Proxy::with_latency(echo_port, one_way).await;
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", link.port)).await.unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        for chunk in [&b"first "[..], b"second ", b"third"] {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while got.len() < 18 {
            let mut buf = [0u8; 64];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the link closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let took = started.elapsed();
        assert_eq!(got, b"first second third");
        assert!(took >= one_way * 2, "a round trip took {took:?}, less than twice {one_way:?}");
        // Queued chunks would each wait for the one before: 200 ms more for the last.
        assert!(took < one_way * 2 + Duration::from_millis(150), "chunks queued behind each other: {took:?}");
    }
}
