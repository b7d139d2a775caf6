//! An application serving smache's metrics to Prometheus:
//! `cargo run --example metrics --features prometheus`.
//!
//! It installs the Prometheus recorder with its HTTP listener (on
//! `SMACHE_METRICS_ADDR`, else a free loopback port), makes a few calls on
//! the embedded store (no servers needed), then scrapes its own endpoint
//! and prints what Prometheus would read: hits, misses and computations by
//! function, and how long the computations took.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use smache::Smache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pretend this is expensive.
#[smache::computed(Raw, ttl = "10m")]
async fn square(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    x * x
}

#[smache::computed(Raw, name = "shop.price")]
fn price(sku: &str) -> u64 {
    sku.len() as u64 * 100
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::var("SMACHE_METRICS_ADDR") {
        Ok(addr) => addr.parse()?,
        Err(_) => free_loopback_port()?,
    };
    // Histograms as Prometheus histograms (the exporter's default is a
    // summary): buckets for every smache duration, in seconds.
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Prefix("smache_".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .install()?;
    smache::metrics::describe();

    let smache = Smache::builder().prefix("metrics-example").build()?;
    smache
        .scope(async {
            for x in [1, 2, 3, 1, 2, 3, 1] {
                square(x).await; // 3 misses (computed), then hits
            }
        })
        .await;
    smache.scope_sync(|| {
        for sku in ["a-1", "b-22", "a-1"] {
            price(sku);
        }
    });

    println!("GET http://{addr}/metrics\n");
    println!("{}", scrape(addr).await?);
    Ok(())
}

/// A loopback address with a port free right now.
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The body of `GET /metrics` (HTTP/1.0), retried while the listener,
/// started in the background, is not up yet.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut tries = 0;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err),
        }
    };
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => response,
    })
}
