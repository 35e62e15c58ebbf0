//! Reading partitions the way kcat and librdkafka's `rdkafka_performance` do: librdkafka's
//! simple consumer (`rd_kafka_consume_start_queue`, no consumer group) and its batch call
//! (`rd_kafka_consume_batch_queue`), so that the consume figure is bound by the broker and
//! librdkafka's fetcher, not by the bench.
//!
//! Why not the rdkafka crate's `BaseConsumer` with `assign` and `poll`: `poll` hands out one
//! message per call through the event API (a queue pop, an event, an `Arc` per message), which
//! tops out near 0.3 M records/s here; and `assign` needs a `group.id`, whose group machinery
//! delays the first record by ~0.6 s (kcat, without a group, gets it in ~50 ms). The crate
//! has no safe wrapper for the simple consumer, hence the raw bindings here (the only unsafe
//! code in the bench).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Messages taken from the queue per call.
const BATCH_MAX: usize = 10_000;

/// A consumer without a group, reading `partitions` of `topic` from offset 0 into one queue.
pub struct Reader {
    consumer: BaseConsumer,
    topic: *mut rdsys::rd_kafka_topic_t,
    queue: *mut rdsys::rd_kafka_queue_t,
    partitions: i32,
}

impl Reader {
    /// `config` must not set `group.id`.
    pub fn start(config: &ClientConfig, topic: &str, partitions: i32) -> Result<Reader> {
        let consumer: BaseConsumer = config.create()?;
        let name = CString::new(topic).context("topic name with a NUL byte")?;
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is valid while `consumer` lives, which `Reader` keeps until after it
        // has stopped the partitions and released the topic and queue (in `drop`).
        let (topic, queue) = unsafe {
            (
                rdsys::rd_kafka_topic_new(rk, name.as_ptr(), std::ptr::null_mut()),
                rdsys::rd_kafka_queue_new(rk),
            )
        };
        if topic.is_null() || queue.is_null() {
            bail!("cannot create the topic handle or queue for {name:?}");
        }
        let mut reader = Reader { consumer, topic, queue, partitions: 0 };
        for p in 0..partitions {
            // Offset 0, not the logical BEGINNING: librdkafka resolves a logical offset with
            // ListOffsets, and when it asks before the leader's connection is up it retries
            // only after 500 ms (seen with strace: ~450 ms idle before ListOffsets). The
            // bench's topics are fresh, so they start at 0.
            // SAFETY: valid topic and queue handles (above).
            if unsafe { rdsys::rd_kafka_consume_start_queue(topic, p, 0, queue) } != 0 {
                bail!("cannot start consuming partition {p}");
            }
            reader.partitions = p + 1;
        }
        Ok(reader)
    }

    /// Reads `n` messages; returns when the first one arrived.
    pub fn drain(&self, n: u64, deadline: Instant) -> Result<Instant> {
        let mut first = None;
        let got = self.each(
            deadline,
            |got| got >= n,
            |_| {
                first.get_or_insert_with(Instant::now);
            },
        )?;
        match first {
            Some(first) if got >= n => Ok(first),
            _ => bail!("consumed {got} of {n} before the deadline"),
        }
    }

    /// Hands every message's payload to `on_message` until `done(count)` holds or `deadline`
    /// passes; returns how many messages it saw.
    pub fn each(
        &self,
        deadline: Instant,
        mut done: impl FnMut(u64) -> bool,
        mut on_message: impl FnMut(&[u8]),
    ) -> Result<u64> {
        let mut slots: Vec<*mut rdsys::rd_kafka_message_t> = vec![std::ptr::null_mut(); BATCH_MAX];
        let mut got = 0u64;
        while !done(got) && Instant::now() < deadline {
            // Client events (errors, logs) arrive on the main queue.
            while let Some(event) = self.consumer.poll(Duration::ZERO) {
                if let Err(e) = event {
                    eprintln!("consumer: {e}"); // transient (a reconnect) unless the deadline hits
                }
            }
            // Take what is queued without waiting: with a timeout the batch call waits for a
            // full batch (or the timeout) even when messages are there.
            // SAFETY: `slots` has room for `BATCH_MAX` pointers; librdkafka fills the first
            // `count` and hands their ownership to us.
            let count = unsafe {
                rdsys::rd_kafka_consume_batch_queue(self.queue, 0, slots.as_mut_ptr(), BATCH_MAX)
            };
            if count < 0 {
                bail!("rd_kafka_consume_batch_queue failed");
            }
            let mut failure = None;
            for &m in &slots[..count as usize] {
                failure = failure.or(take(m, &mut got, &mut on_message));
                // SAFETY: ours, destroyed exactly once, after `take` is done with it.
                unsafe { rdsys::rd_kafka_message_destroy(m) };
            }
            if let Some(why) = failure {
                bail!(why);
            }
            if count > 0 {
                continue;
            }
            // Nothing queued: wait for the first message to arrive, then drain again.
            let timeout_ms = Duration::from_millis(100).as_millis() as i32;
            // SAFETY: the queue is valid; the event, if any, is ours and destroyed once below,
            // and the messages it yields belong to it.
            let failure = unsafe {
                let event = rdsys::rd_kafka_queue_poll(self.queue, timeout_ms);
                let mut failure = None;
                if !event.is_null() {
                    if rdsys::rd_kafka_event_type(event) == rdsys::RD_KAFKA_EVENT_FETCH {
                        loop {
                            let m = rdsys::rd_kafka_event_message_next(event);
                            if m.is_null() {
                                break;
                            }
                            failure = failure.or(take(m, &mut got, &mut on_message));
                        }
                    }
                    rdsys::rd_kafka_event_destroy(event);
                }
                failure
            };
            if let Some(why) = failure {
                bail!(why);
            }
        }
        Ok(got)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: the handles were created in `start` and are released once, partitions
        // stopped first, while `consumer` (dropped after this) still lives.
        unsafe {
            for p in 0..self.partitions {
                rdsys::rd_kafka_consume_stop(self.topic, p);
            }
            rdsys::rd_kafka_queue_destroy(self.queue);
            rdsys::rd_kafka_topic_destroy(self.topic);
        }
    }
}

/// One message: counts it and hands its payload over, or returns its error.
fn take(
    m: *const rdsys::rd_kafka_message_t,
    got: &mut u64,
    on_message: &mut impl FnMut(&[u8]),
) -> Option<String> {
    // SAFETY: the callers pass a valid message (theirs or their event's) that outlives this
    // call; its payload is `len` bytes, or null.
    unsafe {
        let err = (*m).err;
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            *got += 1;
            let payload = (*m).payload as *const u8;
            if payload.is_null() {
                on_message(&[]);
            } else {
                on_message(std::slice::from_raw_parts(payload, (*m).len));
            }
            None
        } else if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
            None
        } else {
            Some(format!("consume error {err:?}"))
        }
    }
}
