//! Consuming through librdkafka's batch API (`rd_kafka_consume_batch_queue`), so that the
//! consume figure is bound by the broker and librdkafka's fetcher, not by the bench loop.
//!
//! The rdkafka crate's `BaseConsumer::poll` hands out one message per call through the event
//! API (a queue pop, an event, an `Arc` per message): on this machine that loop tops out near
//! 0.3 M records/s, well below what librdkafka's fetcher delivers. The batch call pops up to
//! `BATCH_MAX` messages per queue lock. The crate exposes no safe wrapper for it, hence the
//! raw bindings here (the only unsafe code in the bench).
//!
//! The assigned partitions' fetch queues are forwarded to a queue of our own: the consumer's
//! queue also carries the crate's events (errors, logs), which the batch call cannot serve.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// Messages taken from the queue per call.
const BATCH_MAX: usize = 10_000;

/// Reads `n` messages of `topic`'s `partitions` (already assigned); returns payload bytes.
pub fn drain(
    c: &BaseConsumer,
    topic: &str,
    partitions: i32,
    n: u64,
    deadline: Instant,
) -> Result<u64> {
    let mut bytes = 0u64;
    let got = each(c, topic, partitions, deadline, |got| got >= n, |p| bytes += p.len() as u64)?;
    if got < n {
        bail!("consumed {got} of {n} before the deadline");
    }
    Ok(bytes)
}

/// A queue of our own, fed by the fetch queues of the assigned partitions.
struct Queue(*mut rdsys::rd_kafka_queue_t);

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: a queue reference we own, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) };
    }
}

fn partitions_queue(c: &BaseConsumer, topic: &str, partitions: i32) -> Result<Queue> {
    let rk = c.client().native_ptr();
    let topic = CString::new(topic).context("topic name with a NUL byte")?;
    // SAFETY: `rk` is valid while `c` lives; every queue reference obtained here is either
    // kept in `Queue` (destroyed on drop) or destroyed right after forwarding.
    unsafe {
        let queue = Queue(rdsys::rd_kafka_queue_new(rk));
        for p in 0..partitions {
            let pq = rdsys::rd_kafka_queue_get_partition(rk, topic.as_ptr(), p);
            if pq.is_null() {
                bail!("no fetch queue for partition {p}");
            }
            rdsys::rd_kafka_queue_forward(pq, queue.0);
            rdsys::rd_kafka_queue_destroy(pq);
        }
        Ok(queue)
    }
}

/// Hands every message's payload to `on_message` until `done(count)` holds or `deadline`
/// passes; returns how many messages it saw. Call right after `assign`.
pub fn each(
    c: &BaseConsumer,
    topic: &str,
    partitions: i32,
    deadline: Instant,
    mut done: impl FnMut(u64) -> bool,
    mut on_message: impl FnMut(&[u8]),
) -> Result<u64> {
    let queue = partitions_queue(c, topic, partitions)?;
    let mut slots: Vec<*mut rdsys::rd_kafka_message_t> = vec![std::ptr::null_mut(); BATCH_MAX];
    let mut got = 0u64;
    let mut failure = None;
    while !done(got) && failure.is_none() && Instant::now() < deadline {
        // Serve the consumer's own queue (events, and messages fetched before the forward
        // above took effect).
        while let Some(m) = c.poll(Duration::ZERO) {
            let m = m?;
            got += 1;
            on_message(m.payload().unwrap_or(&[]));
        }
        let timeout_ms = Duration::from_millis(100).as_millis() as i32;
        // SAFETY: `slots` has room for `BATCH_MAX` pointers; librdkafka fills the first
        // `count` and hands their ownership to us.
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(queue.0, timeout_ms, slots.as_mut_ptr(), BATCH_MAX)
        };
        if count < 0 {
            bail!("rd_kafka_consume_batch_queue failed");
        }
        for &m in &slots[..count as usize] {
            // SAFETY: each of the first `count` slots is a valid message we own; its payload
            // (`len` bytes, or null) lives until the message is destroyed, exactly once, after
            // `on_message` returns.
            unsafe {
                let err = (*m).err;
                if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    got += 1;
                    let payload = (*m).payload as *const u8;
                    if payload.is_null() {
                        on_message(&[]);
                    } else {
                        on_message(std::slice::from_raw_parts(payload, (*m).len));
                    }
                } else if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF
                    && failure.is_none()
                {
                    failure = Some(format!("consume error {err:?}"));
                }
                rdsys::rd_kafka_message_destroy(m);
            }
        }
    }
    match failure {
        Some(why) => bail!(why),
        None => Ok(got),
    }
}
