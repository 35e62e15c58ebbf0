//! The node's HTTP endpoint as a monitoring system reads it: one `GET` over a fresh
//! connection, and `/metrics` parsed by a Prometheus text-format parser (`prometheus-parse`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// Connecting, sending and reading one answer are each bounded by this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a scrape of a test node is a few tens of KiB).
const ANSWER_BYTES_MAX: u64 = 16 << 20;

/// `GET path` on `addr` with HTTP/1.1 and `Connection: close`: (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .with_context(|| format!("GET {path}"))?;
    let text = String::from_utf8(answer).context("the answer is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("no header end: {text:?}") };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((status, body))
}

/// A chunked body's data.
fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("truncated chunk")?);
        rest = after.get(size + 2..).context("truncated chunk end")?;
    }
}

/// One scrape of `/metrics`.
pub struct Scrape(pub prometheus_parse::Scrape);

impl Scrape {
    pub fn parse(text: &str) -> anyhow::Result<Scrape> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Ok(Scrape(prometheus_parse::Scrape::parse(lines).context("parse /metrics")?))
    }

    /// The sum of the samples named `metric` whose labels include every pair of `labels`
    /// (a histogram's sample counts its observations); `None` when there is none.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in &self.0.samples {
            if sample.metric != metric
                || !labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
            {
                continue;
            }
            let value = match &sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    /// Every metric name in the scrape.
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.0.samples.iter().map(|s| s.metric.as_str()).collect()
    }
}
