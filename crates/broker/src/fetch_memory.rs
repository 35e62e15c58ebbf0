//! Bounds the memory Fetch responses hold, from the log read until the socket write, per
//! connection and broker-wide: a read first reserves its bytes; the reservation travels inside
//! the response's `Bytes` and is released when the writer has sent them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Kafka's default `fetch.max.bytes` (55 MiB): the most record bytes one Fetch response holds
/// (the first batch excepted, see KIP-74).
pub const FETCH_MAX_BYTES_DEFAULT: usize = 55 * 1024 * 1024;
/// Record bytes that Fetch responses of one connection may hold at once (read, not yet sent).
pub const FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64 * 1024 * 1024;
/// Record bytes that all Fetch responses of the broker may hold at once.
pub const FETCH_BYTES_IN_FLIGHT_MAX: usize = 192 * 1024 * 1024;

// One response of the largest allowed size must fit both bounds, or it could never be served.
const _: () = assert!(FETCH_MAX_BYTES_DEFAULT <= FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX);
const _: () = assert!(FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX <= FETCH_BYTES_IN_FLIGHT_MAX);
// Semaphore permits are acquired in u32 amounts.
const _: () = assert!(FETCH_BYTES_IN_FLIGHT_MAX <= u32::MAX as usize);

/// Connections tracked before dead entries are swept from the map.
const CONNECTIONS_SWEEP_MIN: usize = 64;

pub(crate) struct FetchMemory {
    broker: Arc<Semaphore>,
    /// One semaphore per connection (by peer address) while it has a reservation or a fetch
    /// in progress; an entry whose semaphore is gone is free to be replaced or swept.
    connections: Mutex<HashMap<SocketAddr, Weak<Semaphore>>>,
}

/// A connection's share of the bound, held by its fetches in progress.
pub(crate) type ConnectionMemory = Arc<Semaphore>;

/// Reserved bytes; released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    bytes: usize,
    broker: OwnedSemaphorePermit,
    connection: OwnedSemaphorePermit,
}

impl FetchMemory {
    pub fn new() -> FetchMemory {
        FetchMemory {
            broker: Arc::new(Semaphore::new(FETCH_BYTES_IN_FLIGHT_MAX)),
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The semaphore of the connection from `peer`.
    pub fn connection(&self, peer: SocketAddr) -> ConnectionMemory {
        let Ok(mut map) = self.connections.lock() else {
            // A panic while holding this lock left nothing torn: a fresh semaphore is safe
            // (the broker-wide bound still holds).
            return Arc::new(Semaphore::new(FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX));
        };
        if let Some(live) = map.get(&peer).and_then(Weak::upgrade) {
            return live;
        }
        if map.len() >= CONNECTIONS_SWEEP_MIN {
            map.retain(|_, sem| sem.strong_count() > 0);
        }
        let fresh = Arc::new(Semaphore::new(FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX));
        map.insert(peer, Arc::downgrade(&fresh));
        fresh
    }

    /// Reserves `bytes` now, or `None` if either bound has not that much left. A read larger
    /// than a bound (an oversize first batch) takes all of it, so it runs alone.
    pub fn try_reserve(&self, connection: &ConnectionMemory, bytes: usize) -> Option<Reservation> {
        let (for_connection, for_broker) = permits(bytes);
        let connection = connection.clone().try_acquire_many_owned(for_connection).ok()?;
        let broker = self.broker.clone().try_acquire_many_owned(for_broker).ok()?;
        Some(Reservation { bytes, broker, connection })
    }

    /// Reserves `bytes`, waiting until both bounds have that much left.
    pub async fn reserve(&self, connection: &ConnectionMemory, bytes: usize) -> Reservation {
        let (for_connection, for_broker) = permits(bytes);
        // The semaphores are never closed, so acquiring only ever waits.
        let connection = connection.clone().acquire_many_owned(for_connection).await;
        let broker = self.broker.clone().acquire_many_owned(for_broker).await;
        match (connection, broker) {
            (Ok(connection), Ok(broker)) => Reservation { bytes, broker, connection },
            _ => unreachable!("fetch memory semaphores are never closed"),
        }
    }
}

fn permits(bytes: usize) -> (u32, u32) {
    let for_connection = bytes.min(FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX) as u32;
    let for_broker = bytes.min(FETCH_BYTES_IN_FLIGHT_MAX) as u32;
    (for_connection, for_broker)
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Releases what is reserved beyond `bytes`.
    fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        let (keep_connection, keep_broker) = permits(bytes);
        let excess_connection = self.connection.num_permits() - keep_connection as usize;
        let excess_broker = self.broker.num_permits() - keep_broker as usize;
        drop(self.connection.split(excess_connection));
        drop(self.broker.split(excess_broker));
        self.bytes = bytes;
    }
}

/// Stored batches that keep their reservation until the last `Bytes` pointing at them is gone.
struct Reserved {
    data: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Reserved {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` as `Bytes` that hold `reservation` (shrunk to `data`'s capacity) until dropped.
pub(crate) fn reserved_bytes(data: Vec<u8>, mut reservation: Reservation) -> Bytes {
    reservation.shrink_to(data.capacity());
    Bytes::from_owner(Reserved { data, _reservation: reservation })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_connection_cannot_hold_more_than_its_share_until_its_bytes_are_dropped() {
        let memory = FetchMemory::new();
        let one = memory.connection(peer(1));
        let first = memory.try_reserve(&one, FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX - 10);
        let first = first.expect("an idle connection gets its whole share");
        assert!(memory.try_reserve(&one, 11).is_none(), "over the connection's share");
        let other = memory.connection(peer(2));
        let third = memory.try_reserve(&other, 11).expect("another connection is not held up");
        let bytes = reserved_bytes(vec![7u8; 100], first);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(memory.try_reserve(&one, 11).is_some(), "shrunk to the 100 bytes read");
        drop(slice);
        drop(third);
        let all = memory.try_reserve(&one, FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX);
        assert!(all.is_some(), "everything released once the last slice is dropped");
    }

    #[test]
    fn the_broker_bound_holds_across_connections_and_an_oversize_read_runs_alone() {
        let memory = FetchMemory::new();
        let share = FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX;
        let held: Vec<Reservation> = (0..FETCH_BYTES_IN_FLIGHT_MAX / share)
            .map(|i| memory.try_reserve(&memory.connection(peer(i as u16)), share).unwrap())
            .collect();
        let late = memory.connection(peer(999));
        assert!(memory.try_reserve(&late, 1).is_none(), "the broker-wide bound is spent");
        drop(held);
        let huge = memory.try_reserve(&late, 4 * FETCH_BYTES_IN_FLIGHT_MAX).unwrap();
        assert_eq!(huge.bytes(), 4 * FETCH_BYTES_IN_FLIGHT_MAX);
        assert!(memory.try_reserve(&memory.connection(peer(1)), 1).is_none(), "it runs alone");
    }
}
