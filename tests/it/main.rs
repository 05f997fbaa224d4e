//! Integration tests: one binary so the harness is compiled once.

mod fetch;
mod harness;
mod harness_selftest;
