//! Broker liveness as the active controller tracks it (KRaft's BrokerHeartbeatManager): when
//! each broker was last heard from. Sans-IO: the shell passes the time in and fences what
//! [`BrokerLiveness::expired`] returns.
//!
//! The state lives only in the active controller's memory, never in the log. A controller that
//! becomes active starts with [`BrokerLiveness::starting_at`], counting every registered broker
//! as heard from "now": after a failover every broker gets a full session to reach the new
//! controller before it is fenced, instead of being fenced at once for the silence it could not
//! help.

use std::collections::BTreeMap;

use crate::{BrokerEpoch, MetadataImage, NodeId};

/// When one broker (at one registration epoch) was last heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Contact {
    epoch: BrokerEpoch,
    last_ms: i64,
}

/// Last contact per broker. Times are milliseconds on any monotonic clock the shell chooses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerLiveness {
    contacts: BTreeMap<NodeId, Contact>,
}

impl BrokerLiveness {
    /// Every broker registered in `image` counts as heard from at `now_ms`.
    pub fn starting_at(image: &MetadataImage, now_ms: i64) -> BrokerLiveness {
        let contacts = image
            .brokers
            .values()
            .map(|b| (b.id, Contact { epoch: b.epoch, last_ms: now_ms }))
            .collect();
        BrokerLiveness { contacts }
    }

    /// A heartbeat (or registration) the controller accepted. A new epoch replaces the old
    /// registration's contact; time never runs backwards for one broker.
    pub fn on_heartbeat(&mut self, broker: NodeId, epoch: BrokerEpoch, now_ms: i64) {
        let contact = self.contacts.entry(broker).or_insert(Contact { epoch, last_ms: now_ms });
        if epoch > contact.epoch {
            *contact = Contact { epoch, last_ms: now_ms };
        } else if epoch == contact.epoch {
            contact.last_ms = contact.last_ms.max(now_ms);
        }
        // An older epoch is a late message from a dead incarnation: it proves nothing.
    }

    /// Starts the session of every registration in `image` not tracked yet (one the active
    /// controller applied after its sessions started, e.g. while it caught up on the log), as
    /// heard from at `now_ms`; so no registered broker escapes fencing.
    pub fn track_registered(&mut self, image: &MetadataImage, now_ms: i64) {
        for b in image.brokers.values() {
            let tracked = self.contacts.get(&b.id).is_some_and(|c| c.epoch >= b.epoch);
            if !tracked {
                self.contacts.insert(b.id, Contact { epoch: b.epoch, last_ms: now_ms });
            }
        }
    }

    /// The broker is gone from the image (or no longer matters); stop tracking it.
    pub fn forget(&mut self, broker: NodeId) {
        self.contacts.remove(&broker);
    }

    /// Brokers not heard from for longer than `session_timeout_ms`, in id order, with the
    /// epoch they were last heard at (so the shell fences that registration, not a newer one).
    pub fn expired(&self, now_ms: i64, session_timeout_ms: i64) -> Vec<(NodeId, BrokerEpoch)> {
        self.contacts
            .iter()
            .filter(|(_, c)| now_ms.saturating_sub(c.last_ms) > session_timeout_ms)
            .map(|(&id, c)| (id, c.epoch))
            .collect()
    }

    /// When `broker` was last heard from, if it is tracked.
    pub fn last_contact_ms(&self, broker: NodeId) -> Option<i64> {
        self.contacts.get(&broker).map(|c| c.last_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{metadata_record::Record, MetadataRecord, RegisterBrokerRecord};
    use crate::MetadataOffset;

    fn image_with_brokers(ids: &[(i32, i64)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        let records: Vec<MetadataRecord> = ids
            .iter()
            .map(|&(id, epoch)| MetadataRecord {
                record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                    broker_id: id,
                    incarnation_id: vec![0; 16],
                    broker_epoch: epoch,
                    endpoints: vec![],
                    rack: None,
                    fenced: false,
                })),
            })
            .collect();
        image.apply_batch(MetadataOffset(9), &records).expect("registrations apply");
        image
    }

    #[test]
    fn a_new_active_controller_gives_every_broker_a_full_session() {
        let image = image_with_brokers(&[(1, 3), (2, 5)]);
        let live = BrokerLiveness::starting_at(&image, 10_000);
        assert_eq!(live.expired(11_500, 1_500), vec![]);
        assert_eq!(
            live.expired(11_501, 1_500),
            vec![(NodeId(1), BrokerEpoch(3)), (NodeId(2), BrokerEpoch(5))]
        );
    }

    #[test]
    fn heartbeats_keep_a_broker_alive_and_silence_expires_it() {
        let mut live = BrokerLiveness::default();
        live.on_heartbeat(NodeId(1), BrokerEpoch(4), 0);
        live.on_heartbeat(NodeId(2), BrokerEpoch(6), 0);
        live.on_heartbeat(NodeId(1), BrokerEpoch(4), 1_000);
        assert_eq!(live.expired(2_000, 1_500), vec![(NodeId(2), BrokerEpoch(6))]);
        assert_eq!(live.last_contact_ms(NodeId(1)), Some(1_000));
        live.forget(NodeId(2));
        assert_eq!(live.expired(2_000, 1_500), vec![]);
        assert_eq!(live.expired(2_501, 1_500), vec![(NodeId(1), BrokerEpoch(4))]);
    }

    #[test]
    fn registrations_applied_later_get_a_session_too() {
        let mut live = BrokerLiveness::starting_at(&image_with_brokers(&[(1, 3)]), 0);
        live.on_heartbeat(NodeId(1), BrokerEpoch(3), 1_000);
        live.track_registered(&image_with_brokers(&[(1, 3), (2, 7)]), 1_200);
        assert_eq!(live.last_contact_ms(NodeId(1)), Some(1_000), "a known session restarted");
        assert_eq!(live.last_contact_ms(NodeId(2)), Some(1_200));
        assert_eq!(live.expired(2_600, 1_500), vec![(NodeId(1), BrokerEpoch(3))]);
        assert_eq!(
            live.expired(2_701, 1_500),
            vec![(NodeId(1), BrokerEpoch(3)), (NodeId(2), BrokerEpoch(7))]
        );
    }

    #[test]
    fn an_old_epoch_proves_nothing_and_a_new_one_replaces_it() {
        let mut live = BrokerLiveness::default();
        live.on_heartbeat(NodeId(1), BrokerEpoch(4), 100);
        live.on_heartbeat(NodeId(1), BrokerEpoch(2), 5_000);
        assert_eq!(live.last_contact_ms(NodeId(1)), Some(100), "a stale epoch refreshed contact");
        live.on_heartbeat(NodeId(1), BrokerEpoch(8), 6_000);
        assert_eq!(live.expired(7_000, 1_500), vec![]);
        assert_eq!(live.expired(7_501, 1_500), vec![(NodeId(1), BrokerEpoch(8))]);
        // A heartbeat delivered late (earlier timestamp) does not move contact back.
        live.on_heartbeat(NodeId(1), BrokerEpoch(8), 5_500);
        assert_eq!(live.last_contact_ms(NodeId(1)), Some(6_000));
    }
}
