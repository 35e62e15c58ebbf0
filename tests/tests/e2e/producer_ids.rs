//! Producer ids (issue 12): InitProducerId for a producer without a transactional id answers
//! a fresh id at epoch 0, taken from blocks that the active controller commits to the metadata
//! log before a broker may hand them out. No id is handed out twice: not by two brokers, not
//! after a kill -9 of the active controller, not by that node once it is back. A transactional
//! id gets its id from its transaction coordinator, and the next epoch on each InitProducerId.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use strom_tests::cluster::StromCluster;
use strom_tests::raw::RawConnection;
use strom_tests::{wait_until, with_cluster, ClusterOptions};

/// Any served version; v4 is flexible and carries the KIP-360 producer id and epoch.
const VERSION: i16 = 4;
/// More than one block (1000 ids) per broker, so every broker asks the controller again.
const IDS_PER_BROKER: usize = 1_500;
/// Bound for one broker's ids, retries during a controller failover included.
const IDS_TIMEOUT: Duration = Duration::from_secs(90);
/// Between two InitProducerId a broker answered with a retriable error.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_REQUEST: i16 = 42;

fn idempotent_request() -> InitProducerIdRequest {
    InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000)
}

fn init_producer_id(
    conn: &mut RawConnection,
    request: &InitProducerIdRequest,
) -> anyhow::Result<InitProducerIdResponse> {
    let correlation_id =
        conn.send_request(ApiKey::InitProducerId as i16, VERSION, request, VERSION)?;
    conn.read_response(correlation_id, VERSION)
}

/// The ids one node handed out, and how many answers were COORDINATOR_LOAD_IN_PROGRESS.
struct HandedOut {
    ids: Vec<i64>,
    retries: u32,
}

/// `count` producer ids from node `id`, one InitProducerId after another on one connection;
/// COORDINATOR_LOAD_IN_PROGRESS (no block yet) is asked again, as clients do.
fn producer_ids(cluster: &StromCluster, id: u32, count: usize) -> anyhow::Result<HandedOut> {
    let mut conn = RawConnection::connect(cluster.kafka_addr(id))?;
    let deadline = Instant::now() + IDS_TIMEOUT;
    let mut ids = Vec::with_capacity(count);
    let mut retries = 0;
    while ids.len() < count {
        let response = init_producer_id(&mut conn, &idempotent_request())?;
        match response.error_code {
            0 => {
                ensure!(response.producer_epoch == 0, "node {id}: {response:?}");
                ids.push(response.producer_id.0);
            }
            COORDINATOR_LOAD_IN_PROGRESS if Instant::now() < deadline => {
                retries += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
            code => bail!(
                "node {id}: InitProducerId answered {code} after {} ids ({retries} retries)",
                ids.len()
            ),
        }
    }
    Ok(HandedOut { ids, retries })
}

/// Each node's ids, asked of all of them at once; every id must be new to `seen`.
fn ids_from(
    cluster: &StromCluster,
    nodes: &[u32],
    seen: &mut BTreeSet<i64>,
    when: &str,
) -> anyhow::Result<()> {
    let answers: Vec<(u32, anyhow::Result<HandedOut>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|&id| (id, scope.spawn(move || producer_ids(cluster, id, IDS_PER_BROKER))))
            .collect();
        workers.into_iter().map(|(id, w)| (id, w.join().expect("worker thread"))).collect()
    });
    for (id, answer) in answers {
        let HandedOut { ids, retries } = answer?;
        let (low, high) = (ids.iter().min().copied(), ids.iter().max().copied());
        eprintln!(
            "producer ids {when}: node {id} handed out {} ids in {low:?}..={high:?} \
             ({retries} COORDINATOR_LOAD_IN_PROGRESS)",
            ids.len()
        );
        for pid in ids {
            ensure!(pid >= 0, "node {id} handed out producer id {pid} {when}");
            ensure!(seen.insert(pid), "producer id {pid} handed out twice (node {id}, {when})");
        }
    }
    Ok(())
}

#[test]
fn producer_ids_are_never_handed_out_twice_across_brokers_and_controller_failover() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let controller = cluster.active_controller()?;
        let survivors: Vec<u32> =
            cluster.ids().into_iter().filter(|&id| id != controller).collect();
        let mut seen = BTreeSet::new();
        ids_from(cluster, &cluster.ids(), &mut seen, "before the failover")?;

        cluster.kill9(controller)?;
        ids_from(cluster, &survivors, &mut seen, "after kill -9 of the active controller")?;
        let new_controller = cluster.active_controller()?;
        ensure!(new_controller != controller, "node {controller} is still named controller");

        // The killed node forgot the rest of its block; it gets a new one, never the old.
        cluster.restart(controller)?;
        ids_from(cluster, &[controller], &mut seen, "from the restarted former controller")?;
        ensure!(seen.len() == IDS_PER_BROKER * 6, "{} distinct ids", seen.len());
        Ok(())
    });
}

#[test]
fn init_producer_id_answers_idempotent_producers_and_bumps_a_transactional_ids_epoch() {
    with_cluster(1, ClusterOptions::default(), |cluster| {
        let mut conn = RawConnection::connect(cluster.kafka_addr(1))?;
        let deadline = Instant::now() + IDS_TIMEOUT;
        let first = loop {
            let response = init_producer_id(&mut conn, &idempotent_request())?;
            match response.error_code {
                0 => break response,
                COORDINATOR_LOAD_IN_PROGRESS if Instant::now() < deadline => {
                    std::thread::sleep(RETRY_PAUSE)
                }
                code => bail!("InitProducerId answered {code}"),
            }
        };
        ensure!(first.producer_epoch == 0, "{first:?}");

        // KIP-360: a producer that names its id and epoch still gets a new id, as Kafka
        // answers a producer without a transactional id.
        let again = idempotent_request()
            .with_producer_id(first.producer_id)
            .with_producer_epoch(first.producer_epoch);
        let second = init_producer_id(&mut conn, &again)?;
        ensure!(second.error_code == 0 && second.producer_epoch == 0, "{second:?}");
        ensure!(second.producer_id != first.producer_id, "the same id again: {second:?}");

        let half = idempotent_request().with_producer_id(ProducerId(5));
        let refused = init_producer_id(&mut conn, &half)?;
        ensure!(refused.error_code == INVALID_REQUEST, "an id without its epoch: {refused:?}");
        ensure!(refused.producer_id == ProducerId(-1) && refused.producer_epoch == -1);

        let transactional = |id: &'static str| {
            idempotent_request()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(id))))
        };
        // A transactional id is its coordinator's: there is none before FindCoordinator (key
        // type 1) has created __transaction_state; then the id gets a producer id at epoch 0,
        // and each InitProducerId after that the next epoch of the same producer id.
        let txn = init_producer_id(&mut conn, &transactional("orders-tx"))?;
        ensure!(txn.error_code == COORDINATOR_NOT_AVAILABLE, "transactional id: {txn:?}");
        let find = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![StrBytes::from_static_str("orders-tx")]);
        let first = wait_until(IDS_TIMEOUT, "a transaction coordinator", || {
            let id = conn.send_request(ApiKey::FindCoordinator as i16, 4, &find, 4)?;
            let found: FindCoordinatorResponse = conn.read_response(id, 4)?;
            ensure!(found.coordinators.first().is_some_and(|c| c.error_code == 0), "{found:?}");
            let txn = init_producer_id(&mut conn, &transactional("orders-tx"))?;
            ensure!(txn.error_code == 0, "InitProducerId: {txn:?}");
            Ok(Some(txn))
        })?;
        ensure!(first.producer_epoch == 0, "{first:?}");
        let bumped = init_producer_id(&mut conn, &transactional("orders-tx"))?;
        ensure!(bumped.error_code == 0, "{bumped:?}");
        ensure!(
            (bumped.producer_id, bumped.producer_epoch) == (first.producer_id, 1),
            "{bumped:?}"
        );
        let empty = init_producer_id(&mut conn, &transactional(""))?;
        ensure!(empty.error_code == INVALID_REQUEST, "empty transactional id: {empty:?}");
        Ok(())
    });
}
