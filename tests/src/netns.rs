//! Network namespaces a test creates and removes itself, for network-partition tests.
//!
//! [`NetLab`] builds one namespace per node plus a "hub" namespace holding a bridge; every node
//! namespace is plugged into the bridge with a veth pair and gets `10.77.0.<id>/24`, the bridge
//! itself `10.77.0.254/24`. These addresses exist only inside the namespaces made here, so any
//! number of labs (and the host) can use them at once. The test's own thread joins the hub
//! ([`NetLab::enter_hub`]) so its Kafka clients reach every node; node processes are spawned from
//! a thread that joined the node's namespace ([`NetLab::in_node`]).
//!
//! [`NetLab::isolate`] cuts one node off from the other nodes (blackhole routes on both sides,
//! inside the node namespaces) while the hub, and so the test, still reaches it;
//! [`NetLab::heal`] removes the routes. Dropping the lab moves the thread back and deletes every
//! namespace (and with them the veths and routes); drop the node processes first.
//!
//! [`NetnsCluster`] is a 3-node strom cluster in such a lab.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::raw::RawConnection;
use crate::{NodeOptions, StromNode};

/// First three octets of every address; the host part is the node id (254: the hub).
const SUBNET: [u8; 3] = [10, 77, 0];
const HUB_HOST: u8 = 254;
/// Every node listens on these ports of its own address.
pub const KAFKA_PORT: u16 = 9092;
pub const CONTROL_PORT: u16 = 9093;

static LABS: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("run `ip` (iproute2)")?;
    ensure!(
        output.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn enter(namespace: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{namespace}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("setns into {namespace}"))
}

/// Why this machine cannot run namespace tests, or `None` when it can: creates and deletes a
/// probe namespace (needs root, or CAP_SYS_ADMIN + CAP_NET_ADMIN, and iproute2).
pub fn unavailable_reason() -> Option<String> {
    let probe =
        format!("strom-probe-{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            let self_ns = File::open("/proc/thread-self/ns/net");
            self_ns.err().map(|e| format!("cannot open /proc/thread-self/ns/net: {e}"))
        }
        Err(error) => Some(format!("cannot create a network namespace: {error:#}")),
    }
}

/// Namespaces, bridge and veths of one test; removed on drop.
pub struct NetLab {
    prefix: String,
    ids: Vec<u32>,
    /// The calling thread's namespace before [`NetLab::enter_hub`], to go back on drop.
    original: Option<File>,
}

impl NetLab {
    /// The hub and one namespace per node id (1..=253), wired and up.
    pub fn create(ids: &[u32]) -> anyhow::Result<NetLab> {
        ensure!(ids.iter().all(|&id| (1..HUB_HOST as u32).contains(&id)), "ids {ids:?}");
        let prefix =
            format!("strom-{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
        let lab = NetLab { prefix, ids: ids.to_vec(), original: None };
        let hub = lab.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &format!("{}/24", host(HUB_HOST)), "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for &id in ids {
            let ns = lab.namespace(id);
            let port = format!("vh{id}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", host(id as u8)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    pub fn namespace(&self, id: u32) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// The address of node `id` inside the lab.
    pub fn addr(id: u32) -> IpAddr {
        host(id as u8)
    }

    /// Moves the calling thread (and the threads it starts from now on, such as librdkafka's)
    /// into the hub namespace; drop moves it back.
    pub fn enter_hub(&mut self) -> anyhow::Result<()> {
        if self.original.is_none() {
            self.original = Some(File::open("/proc/thread-self/ns/net")?);
        }
        enter(&self.hub())
    }

    /// Runs `f` on a thread inside node `id`'s namespace (processes it spawns live there).
    pub fn in_node<T: Send>(&self, id: u32, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let namespace = self.namespace(id);
        let name = namespace.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&name)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {namespace} panicked"))?
        })
    }

    /// Node `id` can no longer reach any other node nor be reached by one (packets dropped
    /// silently, existing connections included); the hub still reaches it.
    pub fn isolate(&self, id: u32) -> anyhow::Result<()> {
        self.routes("add", id)
    }

    /// Undoes [`NetLab::isolate`].
    pub fn heal(&self, id: u32) -> anyhow::Result<()> {
        self.routes("del", id)
    }

    fn routes(&self, verb: &str, id: u32) -> anyhow::Result<()> {
        for &other in self.ids.iter().filter(|&&o| o != id) {
            for (from, to) in [(id, other), (other, id)] {
                let target = format!("{}/32", host(to as u8));
                ip(&["-n", &self.namespace(from), "route", verb, "blackhole", &target])?;
            }
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if let Some(original) = self.original.take() {
            if let Err(error) =
                move_into_link_name_space(original.as_fd(), Some(LinkNameSpaceType::Network))
            {
                eprintln!("netns: cannot move the test thread back to its namespace: {error}");
            }
        }
        for namespace in self.ids.iter().map(|&id| self.namespace(id)).chain([self.hub()]) {
            if let Err(error) = ip(&["netns", "del", &namespace]) {
                eprintln!("netns: {error:#}");
            }
        }
    }
}

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last))
}

/// Partition → (leader, ISR) of one topic as librdkafka sees it.
pub type Leadership = BTreeMap<i32, (i32, Vec<i32>)>;

/// A strom cluster of combined nodes 1..=n, each in its own namespace of a [`NetLab`], with the
/// test thread in the hub. Fields drop in order: processes, then the lab.
pub struct NetnsCluster {
    nodes: BTreeMap<u32, StromNode>,
    pub lab: NetLab,
}

impl NetnsCluster {
    /// Creates the lab, moves the calling thread into its hub, starts `n` nodes (every one a
    /// voter, `extra_toml` appended to each config) and waits until each lists all brokers.
    pub fn start(n: u32, extra_toml: &str, timeout: Duration) -> anyhow::Result<NetnsCluster> {
        let ids: Vec<u32> = (1..=n).collect();
        let mut lab = NetLab::create(&ids)?;
        lab.enter_hub()?;
        let voters = ids
            .iter()
            .map(|&id| format!("{id}@{}", SocketAddr::new(NetLab::addr(id), CONTROL_PORT)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = NetnsCluster { nodes: BTreeMap::new(), lab };
        for &id in &ids {
            let kafka_addr = SocketAddr::new(NetLab::addr(id), KAFKA_PORT);
            let control_addr = SocketAddr::new(NetLab::addr(id), CONTROL_PORT);
            let toml = format!(
                "# written by strom-tests: node {id} of a {n}-node cluster in network namespaces\n\
                 node_id = {id}\n\
                 listeners = \"PLAINTEXT://{kafka_addr},CONTROLLER://{control_addr}\"\n\
                 default_replication_factor = {}\n\
                 controller.quorum_voters = \"{voters}\"\n{extra_toml}\n",
                n.min(3)
            );
            let options = NodeOptions {
                node_id: Some(id),
                config_toml: Some(toml),
                kafka_addr: Some(kafka_addr),
                control_addr: Some(control_addr),
                ..NodeOptions::default()
            };
            let node = cluster.lab.in_node(id, move || StromNode::spawn(options))??;
            cluster.nodes.insert(id, node);
        }
        let expected: Vec<i32> = ids.iter().map(|&id| id as i32).collect();
        crate::wait_until(timeout, "every node lists every broker", || {
            for &id in &ids {
                let listed = cluster.brokers_seen_by(id)?;
                if listed != expected {
                    bail!("node {id} lists brokers {listed:?}");
                }
            }
            Ok(Some(()))
        })?;
        Ok(cluster)
    }

    pub fn ids(&self) -> Vec<u32> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u32) -> &StromNode {
        &self.nodes[&id]
    }

    pub fn kafka_addr(&self, id: u32) -> SocketAddr {
        self.nodes[&id].kafka_addr()
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap_of(&self.ids())
    }

    pub fn bootstrap_of(&self, ids: &[u32]) -> String {
        ids.iter().map(|id| self.nodes[id].bootstrap()).collect::<Vec<_>>().join(",")
    }

    /// Node `id`'s own Metadata answer (a raw request: librdkafka may ask any broker).
    fn raw_metadata(&self, id: u32, topic: Option<&str>) -> anyhow::Result<MetadataResponse> {
        const VERSION: i16 = 9;
        let mut connection = RawConnection::connect(self.kafka_addr(id))?;
        let topics = topic.map(|t| {
            vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(t.to_owned()))))]
        });
        let request = MetadataRequest::default()
            .with_topics(Some(topics.unwrap_or_default()))
            .with_allow_auto_topic_creation(false);
        let correlation =
            connection.send_request(ApiKey::Metadata as i16, VERSION, &request, VERSION)?;
        connection.read_response(correlation, VERSION)
    }

    /// Unfenced broker ids in node `id`'s Metadata.
    pub fn brokers_seen_by(&self, id: u32) -> anyhow::Result<Vec<i32>> {
        let metadata = self.raw_metadata(id, None)?;
        let mut ids: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// `topic`'s leaders and ISRs as node `id` answers (its own, possibly stale, view).
    pub fn leadership_seen_by(&self, id: u32, topic: &str) -> anyhow::Result<Leadership> {
        let metadata = self.raw_metadata(id, Some(topic))?;
        let t = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
            .with_context(|| format!("{topic} not in node {id}'s Metadata"))?;
        ensure!(t.error_code == 0, "node {id}: {topic} error {}", t.error_code);
        Ok(t.partitions
            .iter()
            .map(|p| {
                let isr = p.isr_nodes.iter().map(|n| n.0).collect();
                (p.partition_index, (p.leader_id.0, isr))
            })
            .collect())
    }

    /// The log tail of every node, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|(id, n)| format!("----- node {id} log tail -----\n{}\n", n.stderr_tail(lines)))
            .collect()
    }
}
