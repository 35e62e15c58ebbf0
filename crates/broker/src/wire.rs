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

/// A Kafka error code another broker answered, by its name for messages:
/// `NotCoordinator (16)`.
pub(crate) fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => format!("error code {code}"),
    }
}
