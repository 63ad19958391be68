//! ferry's integration tests: one binary (as ripgrep and uv), a module per feature.
//! Real servers run on random 127.0.0.1 ports and are stopped by PID when a test ends or panics.

mod bundle;
mod cli;
mod clients;
mod conformance;
mod copy;
mod copy_gaps;
mod daemon;
mod delta;
mod faults;
mod harness;
mod hostile;
mod inplace;
mod inspect_format;
mod oracle;
mod referrers;
mod release;
mod s3;
mod serve;
mod serve_push;
mod serve_secure;
mod store_interop;
mod sync;
mod unbundle;
mod ux;
mod verbs;
mod verify;
