//! Test harness (in progress)
