//! The bundle file on its own: the on-disk format (`ferry-bundle.json` and the
//! tar + seekable zstd layout) and the untrusting reader. It knows nothing of
//! how a bundle is planned or written, so every reader (transports, `serve`,
//! `verify`, `ls`) can use it without pulling in the bundling job.

pub mod delta;
pub mod format;
pub mod merge;
pub mod parts;
pub mod read;
pub mod sign;

pub use read::read_index;
