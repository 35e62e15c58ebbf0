//! End-to-end tests: each test starts its own real `strom` node on free loopback ports and
//! drives it with librdkafka (`rdkafka`), `kcat`, raw sockets and signals. One test binary.

mod check_deps;
mod compaction;
mod config_defaults;
mod connections;
mod durability;
mod fd_limit;
mod fetch_limits;
mod fetch_sessions;
mod file_handles;
mod fuzz_node;
mod groups;
mod groups_clients;
mod idempotence;
mod kcat;
mod lifecycle;
mod metadata_limits;
mod module_cycles;
mod module_docs;
mod power_loss;
mod produce_acks;
mod producer_ids;
mod quorum;
mod raw_socket;
mod read_committed;
mod replica_fetchers;
mod replication;
mod reserved_names;
mod restart;
mod roles;
mod roundtrip;
mod storage_faults;
mod transactions;
mod transactions_failover;
mod txn_cli;
mod txn_coordinator;
