//! The distribution HTTP API: its URL table and error codes, shared by the
//! client and by `serve`, and the client that pulls from registries.

pub mod client;
pub mod errcode;
pub mod routes;
