//! ferry carries container images across air gaps: it keeps images in a
//! store laid out exactly like the distribution registry's v2 storage, serves
//! that store as a registry, and checks it byte by byte.
#![deny(missing_docs)]

pub mod auth;
pub mod blob;
pub mod bundle;
pub mod bundlefile;
pub mod cli;
pub mod copy;
pub mod digest;
pub mod direct;
pub mod fixtures;
pub mod gojson;
pub mod image;
pub mod image_config;
pub mod inspect;
pub mod limits;
pub mod manifest;
pub mod media_type;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod serve;
pub mod store;
pub mod sync;
pub mod task;
pub mod template;
pub mod transport;
