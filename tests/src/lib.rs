//! Code shared by the helper programs that the integration tests start as real processes.
