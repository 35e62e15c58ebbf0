//! The Kafka wire protocol as strom serves it: framing, the API version table, request decoding
//! and response encoding (codecs from the `kafka-protocol` crate), and a zero-copy view of
//! record batches. Pure: no IO, no clocks, no runtime.

pub mod batch;
pub mod compression;
pub mod control;
pub mod frame;
pub mod keys;
pub mod request;
pub mod versions;

pub use kafka_protocol;
pub use request::{decode_request, encode_response, Request, RequestFrame};
