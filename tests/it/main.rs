//! Integration tests: one binary so the harness is compiled once.

mod auth;
mod catalog;
mod config;
mod container;
mod copy;
mod copy_auth;
mod copy_referrers;
mod dirtree;
mod fetch;
mod genconf;
mod harness;
mod harness_selftest;
mod hostile;
mod maintain;
mod mappings;
mod mappings_auth;
mod options;
mod permissions;
mod push;
mod push_faults;
mod readme;
mod serve;
mod stock;
mod subset;
mod sync;
mod sync_service;
