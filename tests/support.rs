//! The harness as the test modules name it: everything lives in the library part of this
//! crate (`tests/src/`), shared with the benchmark driver.

pub use sluice_tests::bus::*;
pub use sluice_tests::fixtures::*;
pub use sluice_tests::process::*;

/// A temporary folder for processor scripts that is not beneath `/tmp`: the configuration
/// refuses a processor's `writable` folder there (a shared folder), and the tests give the
/// scripts' folder as `writable`. It is beneath the build's own temporary folder.
pub fn scripts_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let directory =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir for scripts");
    let path = directory.path().to_path_buf();
    (directory, path)
}
