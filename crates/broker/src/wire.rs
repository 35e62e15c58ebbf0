//! Kafka wire-level names and small conversions shared by the handlers, the group
//! coordinator, the replica fetcher and the peer connections, so none of them reaches into
//! another's module for them.

use kafka_protocol::protocol::StrBytes;

/// The listener name whose endpoints Kafka clients and peers are told about.
pub(crate) const LISTENER: &str = "PLAINTEXT";

/// A Kafka string from any owned or borrowed text.
pub(crate) fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}
