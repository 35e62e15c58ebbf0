//! The authorized-operations bitfields (KIP-430) that Metadata, DescribeCluster and
//! DescribeGroups answer when a client asks for them: strom has no authorizer, so, as Kafka
//! without one, every operation the resource type supports is allowed. Bits are Kafka's
//! `AclOperation` codes.

/// Kafka's "authorized operations were not requested" marker.
pub(crate) const NOT_REQUESTED: i32 = i32::MIN;

// Kafka's AclOperation codes (0-2 are UNKNOWN, ANY and ALL, never in a bitfield).
const READ: u8 = 3;
const WRITE: u8 = 4;
const CREATE: u8 = 5;
const DELETE: u8 = 6;
const ALTER: u8 = 7;
const DESCRIBE: u8 = 8;
const CLUSTER_ACTION: u8 = 9;
const DESCRIBE_CONFIGS: u8 = 10;
const ALTER_CONFIGS: u8 = 11;
const IDEMPOTENT_WRITE: u8 = 12;

/// A resource type whose operations a response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Topic,
    Group,
    Cluster,
}

/// The operations Kafka defines for `resource` (its `AclEntry.supportedOperations`).
fn supported(resource: Resource) -> &'static [u8] {
    match resource {
        Resource::Topic => {
            &[READ, WRITE, CREATE, DESCRIBE, DELETE, ALTER, DESCRIBE_CONFIGS, ALTER_CONFIGS]
        }
        Resource::Group => &[READ, DESCRIBE, DELETE],
        Resource::Cluster => &[
            CREATE,
            CLUSTER_ACTION,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
            IDEMPOTENT_WRITE,
            ALTER,
            DESCRIBE,
        ],
    }
}

/// The bitfield to answer for `resource`: every supported operation when `requested`, else
/// the "not requested" marker.
pub(crate) fn operations(resource: Resource, requested: bool) -> i32 {
    if !requested {
        return NOT_REQUESTED;
    }
    supported(resource).iter().fold(0, |bits, op| bits | (1 << op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_are_kafkas_without_an_authorizer() {
        // As a Kafka broker without an authorizer answers them.
        assert_eq!(operations(Resource::Topic, true), 0b1101_1111_1000);
        assert_eq!(operations(Resource::Group, true), (1 << 3) | (1 << 6) | (1 << 8));
        assert_eq!(operations(Resource::Cluster, true), 0b1_1111_1010_0000);
        assert_eq!(operations(Resource::Cluster, false), i32::MIN);
    }
}
