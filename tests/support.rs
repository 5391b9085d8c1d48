//! The harness as the test modules name it: everything lives in the library part of this
//! crate (`tests/src/`), shared with the benchmark driver.

pub use sluice_tests::bus::*;
pub use sluice_tests::fixtures::*;
pub use sluice_tests::process::*;
