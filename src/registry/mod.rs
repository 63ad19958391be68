//! The distribution HTTP API: its URL table and error codes, shared by the
//! client and by `serve`, and the client that pulls from registries (split by
//! resource: connection, auth and retries in `client`, then manifests, blobs, uploads, tags).

mod blobs;
pub mod client;
pub mod errcode;
mod manifests;
pub mod routes;
mod tags;
pub mod uploads;

pub use client::{Client, ClientOptions, RegistryError};
