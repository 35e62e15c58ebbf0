//! Connection limits and idle timeouts (issue 11): 20,000 idle connections and a flood of new
//! ones on the client listeners of a three-node cluster leave an `acks=all` producer running,
//! and a node restarted meanwhile catches up, because followers fetch on their own
//! inter-broker listener; `connections.max.idle.ms` closes
//! idle connections (and half-sent frames) but not active ones; `max.connections.per.ip` and
//! `max.connections` close a connection over the limit as soon as it is accepted.
//!
//! Counts and ack gaps are printed with `eprintln!` (run with `--no-capture`); the only time
//! bounds asserted are generous ones (an ack gap of 10 s, a close within seconds).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::ApiKey;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::RawConnection;
use strom_tests::{segment, wait_until, with_cluster, with_node, ClusterOptions, NodeOptions};

/// Idle connections the flood test holds open, spread over the three client listeners, by
/// `HOLDERS` helper processes (one process's open-file limit may be 20,000 or less).
const IDLE_CONNECTIONS: usize = 20_000;
const HOLDERS: usize = 4;
/// Each node's `max_connections` is its share of the idle connections plus this: room for the
/// producer and the harness, then filled up by the filler.
const MAX_CONNECTIONS_HEADROOM: usize = 100;
/// Connections per node that the filler opens on the nodes that keep running: more than the
/// headroom.
const FILLER_PER_NODE: usize = 3 * MAX_CONNECTIONS_HEADROOM;
/// Threads that open and close connections, each holding up to `FLOOD_RING` at a time.
const FLOOD_THREADS: usize = 4;
const FLOOD_RING: usize = 200;
/// Connects per second per flood thread, at most (two cores run the cluster and the test).
const FLOOD_RATE_PER_THREAD: u64 = 2_000;
const FLOOD_DURATION: Duration = Duration::from_secs(20);
/// Flooding before the idle connections are counted and a node stops.
const FLOOD_SETTLE: Duration = Duration::from_secs(2);
/// How long the flood pauses (closing what it holds) while the filler takes the places left.
const FLOOD_PAUSE: Duration = Duration::from_millis(300);
/// The node restarted under the flood, and the bound for it to be back in every ISR.
const RESTARTED: u32 = 3;
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between two acknowledgements the flood may cause.
const ACK_GAP_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PRODUCE_PER_SECOND: u64 = 200;
const TOPIC_PARTITIONS: i32 = 3;

/// A `strom-conn-holder` process holding idle connections; killed on drop.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn spawn(count: usize, addrs: &[SocketAddr]) -> anyhow::Result<Holder> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strom-conn-holder"))
            .arg(count.to_string())
            .args(addrs.iter().map(SocketAddr::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn strom-conn-holder")?;
        let stdin = child.stdin.take().context("holder stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("holder stdout")?);
        Ok(Holder { child, stdin, stdout })
    }

    /// The holder's next line, `key N` (it bounds its own work, and exits on failure).
    fn read(&mut self, key: &str) -> anyhow::Result<usize> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("read from strom-conn-holder")?;
        let n = line.trim().strip_prefix(key).and_then(|n| n.trim().parse().ok());
        n.with_context(|| format!("strom-conn-holder said {line:?}, expected '{key} N'"))
    }

    /// How many of its connections the brokers have not closed.
    fn still_open(&mut self) -> anyhow::Result<usize> {
        writeln!(self.stdin, "check").context("write to strom-conn-holder")?;
        self.read("open")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with a reset on close (SO_LINGER 0), so that thousands of closes leave no
/// TIME_WAIT sockets holding loopback ports that other tests need.
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
    Ok(stream)
}

/// True when the broker has closed (or reset) the connection; never blocks.
fn closed_by_broker(stream: &TcpStream) -> std::io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
            true
        }
        Err(e) => return Err(e),
    };
    stream.set_nonblocking(false)?;
    Ok(closed)
}

/// An `acks=all` producer on a background thread, sending at a steady rate and noting when
/// the count of acknowledged records grows.
struct Producing {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<usize>>,
    producer: Arc<AckingProducer>,
    /// (when, acknowledged so far), one entry per observed increase.
    progress: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Producing {
    fn start(bootstrap: &str, topic: &str) -> anyhow::Result<Producing> {
        let producer = Arc::new(AckingProducer::new(bootstrap, &[])?);
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Vec::new()));
        let (p, flag, book, topic) =
            (producer.clone(), stop.clone(), progress.clone(), topic.to_owned());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0usize;
            let mut seen = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let due =
                    (started.elapsed().as_millis() as u64 * PRODUCE_PER_SECOND / 1000) as usize;
                while sent < due {
                    let value = format!("record-{sent}");
                    let record = Outgoing {
                        partition: Some(sent as i32 % TOPIC_PARTITIONS),
                        value: Some(value.as_bytes()),
                        ..Outgoing::default()
                    };
                    p.send(&topic, sent, record)?;
                    sent += 1;
                }
                p.poll(Duration::from_millis(10));
                let acked = p.acked();
                if acked > seen {
                    seen = acked;
                    book.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), acked));
                }
            }
            Ok(sent)
        });
        Ok(Producing { stop, thread, producer, progress })
    }

    fn acked(&self) -> usize {
        self.producer.acked()
    }

    /// The highest acknowledged offset of each partition so far.
    fn last_acked_offsets(&self) -> std::collections::BTreeMap<i32, i64> {
        let mut out = std::collections::BTreeMap::new();
        for ack in self.producer.reports().into_values().flatten() {
            let offset = out.entry(ack.partition).or_insert(ack.offset);
            *offset = (*offset).max(ack.offset);
        }
        out
    }

    /// Acknowledgements within `[from, to]` and the longest pause between two of them (or
    /// from `from` to the first, and from the last to `to`).
    fn acks_between(&self, from: Instant, to: Instant) -> (usize, Duration) {
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let before = progress.iter().take_while(|(at, _)| *at < from).last().map_or(0, |p| p.1);
        let inside: Vec<&(Instant, usize)> =
            progress.iter().filter(|(at, _)| *at >= from && *at <= to).collect();
        let count = inside.last().map_or(0, |p| p.1 - before);
        let mut gap = Duration::ZERO;
        let mut last = from;
        for (at, _) in inside {
            gap = gap.max(at.duration_since(last));
            last = *at;
        }
        (count, gap.max(to.duration_since(last)))
    }

    /// Stops sending, waits for every report; returns how many records were sent.
    fn finish(self) -> anyhow::Result<(usize, Arc<AckingProducer>)> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = match self.thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("the producer thread panicked"),
        };
        self.producer.flush(Duration::from_secs(60))?;
        Ok((sent, self.producer))
    }
}

#[test]
fn acks_all_producer_keeps_running_through_a_connection_flood() {
    let per_node = IDLE_CONNECTIONS.div_ceil(3);
    let options = ClusterOptions {
        min_insync_replicas: Some(2),
        extra_toml: format!("max_connections = {}\n", per_node + MAX_CONNECTIONS_HEADROOM),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        let topic = "flooded";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, TOPIC_PARTITIONS, 3)?;
        cluster.wait_topic_everywhere(topic, TOPIC_PARTITIONS as usize)?;
        let producing = Producing::start(&cluster.bootstrap(), topic)?;
        wait_until(Duration::from_secs(30), "the producer's first acknowledgement", || {
            Ok((producing.acked() > 0).then_some(()))
        })?;
        let client_addrs: Vec<SocketAddr> =
            cluster.ids().iter().map(|&id| cluster.kafka_addr(id)).collect();

        // Idle connections, round-robin over the nodes, opened by the holders at once.
        let flood_start = Instant::now();
        let mut holders = (0..HOLDERS)
            .map(|h| {
                let mut addrs = client_addrs.clone();
                let nodes = addrs.len();
                addrs.rotate_left(h % nodes);
                Holder::spawn(IDLE_CONNECTIONS / HOLDERS, &addrs)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut idle = 0;
        for holder in &mut holders {
            idle += holder.read("opened")?;
        }
        let opened_in = flood_start.elapsed();

        // The flood: connect, hold a while, close, at a bounded rate, on every client listener.
        let (stop, paused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (connects, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let flooders: Vec<_> = (0..FLOOD_THREADS)
            .map(|t| {
                let (stop, paused) = (stop.clone(), paused.clone());
                let (connects, refused) = (connects.clone(), refused.clone());
                let addrs = client_addrs.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let started = Instant::now();
                    let mut ring = std::collections::VecDeque::with_capacity(FLOOD_RING);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let due =
                            started.elapsed().as_millis() as u64 * FLOOD_RATE_PER_THREAD / 1000;
                        if paused.load(Ordering::Relaxed) {
                            // Gives back every place it holds; no catching up afterwards.
                            ring.clear();
                            n = due;
                        }
                        if n >= due {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        let addr = addrs[(n as usize + t) % addrs.len()];
                        n += 1;
                        // A full accept queue may time a connect out: that is the flood too.
                        let Ok(stream) = connect(addr) else { continue };
                        connects.fetch_add(1, Ordering::Relaxed);
                        ring.push_back(stream);
                        if ring.len() > FLOOD_RING {
                            let oldest = ring.pop_front().context("ring is not empty")?;
                            if closed_by_broker(&oldest).unwrap_or(true) {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        // Under the flood: every idle connection is still held. Then one node stops, the flood
        // pauses and the filler takes every place left on the others' client listeners for
        // good (its connections stay open, so no place is ever given back), and the node
        // starts again: its followers need new connections to the leaders, whose client
        // listeners now refuse every comer.
        std::thread::sleep(FLOOD_SETTLE);
        let mut still_open = 0;
        for holder in &mut holders {
            still_open += holder.still_open()?;
        }
        paused.store(true, Ordering::Relaxed);
        std::thread::sleep(FLOOD_PAUSE);
        let status = cluster.sigterm(RESTARTED)?;
        ensure!(status.success(), "node {RESTARTED} exited with {status}");
        let leaders: Vec<SocketAddr> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != RESTARTED)
            .map(|id| cluster.kafka_addr(id))
            .collect();
        let filler_count = FILLER_PER_NODE * leaders.len();
        let mut filler = Holder::spawn(filler_count, &leaders)?;
        ensure!(filler.read("opened")? == filler_count, "the filler opened too few");
        // The brokers close the surplus as they accept it (bounded: the accept queues drain).
        let filler_open =
            wait_until(Duration::from_secs(10), "the filler's surplus refused", || {
                let open = filler.still_open()?;
                Ok((open < filler_count).then_some(open))
            })?;
        paused.store(false, Ordering::Relaxed);
        let restarted_at = Instant::now();
        cluster.restart(RESTARTED)?;
        // Records acknowledged now were appended while the node was down: it holds them only
        // if its fetchers got new connections to the leaders.
        std::thread::sleep(Duration::from_secs(1));
        let acked_now = producing.last_acked_offsets();
        ensure!(acked_now.len() == TOPIC_PARTITIONS as usize, "acks so far: {acked_now:?}");
        wait_until(CATCH_UP_TIMEOUT, "the restarted node holds the records acked since", || {
            for (&partition, &offset) in &acked_now {
                let dir = cluster.node(RESTARTED).partition_dir(topic, partition);
                let (_, batches) = segment::read_batches(&segment::first_segment(&dir)?)?;
                let end = batches.last().map_or(0, |b| b.next_offset());
                if end <= offset {
                    bail!("node {RESTARTED} holds {topic}-{partition} up to {end}, acked {offset}");
                }
            }
            Ok(Some(()))
        })?;
        let caught_up_in = restarted_at.elapsed();
        // Brokers also ask each other on the inter-broker listeners (the admin API's groups).
        let listed = cluster.cli(RESTARTED, &["group", "list", "--output", "json"])?.success()?;
        let unreachable = &listed.json()?["unreachable"];
        ensure!(
            unreachable.as_array().is_some_and(Vec::is_empty),
            "group list under the flood: unreachable brokers {unreachable}"
        );
        std::thread::sleep(FLOOD_DURATION.saturating_sub(flood_start.elapsed()));
        stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.join().map_err(|_| anyhow::anyhow!("a flooder panicked"))??;
        }
        let flood_end = Instant::now();

        let (acks, gap) = producing.acks_between(flood_start, flood_end);
        let window = flood_end.duration_since(flood_start);
        eprintln!(
            "{idle} idle connections opened in {opened_in:?}, {still_open} still open under the \
             flood; {filler_open} of {filler_count} filler connections held; flood: {} \
             connects, {} of those seen refused; node {RESTARTED} restarted and caught up after \
             {caught_up_in:?}; producer: {acks} acks in {window:?} ({:.0}/s), longest gap \
             {gap:?}",
            connects.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            acks as f64 / window.as_secs_f64()
        );
        ensure!(
            idle == IDLE_CONNECTIONS && still_open == idle,
            "the brokers closed {} of {idle} idle connections within max_connections",
            idle - still_open,
        );
        ensure!(
            refused.load(Ordering::Relaxed) > 0,
            "no flood connection was refused: the client listeners were never full"
        );
        ensure!(acks > 0, "no record was acknowledged during the flood");
        ensure!(gap <= ACK_GAP_MAX, "acknowledgements stopped for {gap:?} during the flood");
        drop(holders);
        drop(filler);

        let (sent, producer) = producing.finish()?;
        let acks = producer.acks_of(0..sent)?;
        let records = kafka::consume_all(&cluster.bootstrap(), topic, &[0, 1, 2], &[])?;
        let by_position: std::collections::HashMap<(i32, i64), Option<Vec<u8>>> =
            records.into_iter().map(|r| ((r.partition, r.offset), r.value)).collect();
        for (id, ack) in acks.iter().enumerate() {
            let expected = format!("record-{id}").into_bytes();
            ensure!(
                by_position.get(&(ack.partition, ack.offset)) == Some(&Some(expected)),
                "record {id} acknowledged at {}@{} is not there",
                ack.partition,
                ack.offset
            );
        }
        eprintln!("{sent} records sent, all acknowledged and read back");
        Ok(())
    });
}

/// How long the idle test lets connections sit: `connections_max_idle_ms`.
const IDLE_MS: u64 = 2_000;

#[test]
fn idle_connections_are_closed_and_active_ones_are_not() {
    let options = NodeOptions {
        config_toml: Some(format!("connections_max_idle_ms = {IDLE_MS}\n")),
        ..NodeOptions::default()
    };
    with_node(options, |node| {
        let idle_for = Duration::from_millis(IDLE_MS);
        let started = Instant::now();
        let silent = connect(node.kafka_addr())?;
        // Sends two bytes of a frame's length, then nothing.
        let mut half_sent = connect(node.kafka_addr())?;
        half_sent.write_all(&[0, 0])?;
        // One request, then silence: idle counts from the last request.
        let mut quiet = RawConnection::connect(node.kafka_addr())?;
        let mut active = RawConnection::connect(node.kafka_addr())?;
        quiet.max_version(ApiKey::ApiVersions)?;

        let mut closed: [Option<Duration>; 2] = [None, None];
        // Three idle periods; the active connection asks every quarter of one.
        while started.elapsed() < 3 * idle_for {
            active
                .max_version(ApiKey::ApiVersions)
                .context("the active connection was closed or stopped answering")?;
            for (i, stream) in [&silent, &half_sent].into_iter().enumerate() {
                if closed[i].is_none() && closed_by_broker(stream)? {
                    closed[i] = Some(started.elapsed());
                }
            }
            std::thread::sleep(idle_for / 4);
        }
        eprintln!("idle connections closed after {closed:?} (connections_max_idle_ms {IDLE_MS})");
        for (what, at) in ["silent", "half-sent frame"].into_iter().zip(closed) {
            let at = at.with_context(|| format!("the {what} connection is still open"))?;
            ensure!(at >= idle_for / 2, "the {what} connection was closed after only {at:?}");
        }
        quiet
            .expect_closed(2 * idle_for)
            .context("the connection that went quiet after one request")?;
        active.max_version(ApiKey::ApiVersions).context("the active connection")?;
        Ok(())
    });
}

#[test]
fn connections_over_the_per_ip_limit_are_closed_at_once() {
    const PER_IP: usize = 3;
    let options = NodeOptions {
        config_toml: Some(format!("max_connections_per_ip = {PER_IP}\n")),
        ..NodeOptions::default()
    };
    with_node(options, |node| {
        let addr = node.kafka_addr();
        // The harness's readiness probe may still hold a place for a moment: retry the first.
        let mut open: Vec<RawConnection> = Vec::new();
        while open.len() < PER_IP {
            let conn =
                wait_until(Duration::from_secs(10), "a connection within the limit", || {
                    let mut conn = RawConnection::connect(addr)?;
                    conn.max_version(ApiKey::ApiVersions)?;
                    Ok(Some(conn))
                })?;
            open.push(conn);
        }
        let mut over = RawConnection::connect(addr)?;
        let refused_at = Instant::now();
        over.expect_closed(Duration::from_secs(5))
            .with_context(|| format!("connection {} from 127.0.0.1", PER_IP + 1))?;
        eprintln!("connection {} closed after {:?}", PER_IP + 1, refused_at.elapsed());
        for (i, conn) in open.iter_mut().enumerate() {
            conn.max_version(ApiKey::ApiVersions).with_context(|| format!("connection {i}"))?;
        }
        // A closed connection gives its place back.
        drop(open.pop());
        let mut replacement =
            wait_until(Duration::from_secs(10), "a place freed by a close", || {
                let mut conn = RawConnection::connect(addr)?;
                conn.max_version(ApiKey::ApiVersions)?;
                Ok(Some(conn))
            })?;
        replacement.max_version(ApiKey::ApiVersions)?;
        Ok(())
    });
}

#[test]
fn control_port_connections_over_the_limit_are_closed_at_once() {
    const CONTROL_MAX: usize = 3;
    let options = NodeOptions {
        config_toml: Some(format!("listener.name.controller.max_connections = {CONTROL_MAX}\n")),
        ..NodeOptions::default()
    };
    with_node(options, |node| {
        let addr = node.control_addr();
        let held = (0..CONTROL_MAX).map(|_| connect(addr)).collect::<Result<Vec<_>, _>>()?;
        let mut over = RawConnection::connect(addr)?;
        over.expect_closed(Duration::from_secs(5))
            .with_context(|| format!("control connection {}", CONTROL_MAX + 1))?;
        for (i, stream) in held.iter().enumerate() {
            ensure!(!closed_by_broker(stream)?, "held control connection {i} was closed");
        }
        drop(held);
        let control = addr.to_string();
        let args = ["cluster", "describe", "--bootstrap-control", control.as_str()];
        wait_until(Duration::from_secs(20), "the control port serves the CLI again", || {
            Ok(strom_tests::cluster::cli(&args, Duration::from_secs(30))?
                .status
                .success()
                .then_some(()))
        })?;
        Ok(())
    });
}
