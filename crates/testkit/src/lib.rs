//! Test-only helpers shared by unit, simulation and end-to-end tests: a seeded RNG whose seed a
//! failing test prints and `STROM_SEED` replays, a manual clock, and deterministic record
//! fixtures.

pub mod clock;
pub mod records;
pub mod rng;

pub use clock::ManualClock;
pub use records::{RecordFixture, RecordFixtures};
pub use rng::{seed_from_env, TestRng};
