//! static-registry: mirror container images into a content-addressed tree that stock
//! nginx serves as a read-only OCI distribution (pull) API.

pub mod bucket;
pub mod bundle;
pub mod catalog;
pub mod config;
pub mod copy;
mod crashpoint;
pub mod fetch;
pub mod htpasswd;
pub mod import;
pub mod manifest;
pub mod mapping;
pub mod nginx;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod report;
pub mod routes;
pub mod schedule;
pub mod select;
pub mod serve;
pub mod service;
pub mod signature;
pub mod store;
pub mod sync;
