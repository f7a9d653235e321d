//! The key-value store guests share: `wasi:keyvalue` (both drafts) and `handoff:kv` on buckets
//! that belong to routes, not to versions.
//!
//! * [`buckets`]: bucket names, the process-wide [`Kv`] (the backend and a handle per bucket in
//!   use), and the [`Grants`] a version resolves once: its route's own bucket (`default`) and
//!   the shared buckets its deploy granted (`kv=NAME`).
//! * [`backend`]: the [`Backend`] trait (per-key linearizable reads and conditional writes,
//!   increments, TTL, bounded listing) and [`redb`], the embedded backend in `kv.redb`;
//!   [`jetstream`] keeps buckets in the cluster's JetStream (`serve --cluster`).
//! * [`access`]: one request's access ([`KvAccess`]), direct or, for a shadow run, through a
//!   scratch overlay that is discarded with the request.
//! * [`limits`]: key and value sizes, quotas, page size.
//! * [`host`] and [`draft`]: the bindings and their host side.
//!
//! Nothing here knows about routes' versions, the route table or HTTP; `crate::host` hands each
//! request its [`KvAccess`], `crate::engine` links the bindings.

pub mod access;
pub mod backend;
pub mod buckets;
mod draft;
mod format;
pub mod host;
pub mod jetstream;
pub mod limits;
pub mod redb;
pub mod switch;
#[cfg(test)]
mod tests;
mod writer;

pub use access::KvAccess;
pub use backend::{Backend, Entry, KvError};
pub use buckets::{Bucket, BucketName, DEFAULT_BUCKET, Grants, Kv};
pub use host::KvView;
pub use limits::KvLimits;

/// Links `wasi:keyvalue` at both drafts and `handoff:kv` side by side, so guests built for
/// either draft run unmodified, reaching each request's access through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
) -> anyhow::Result<()> {
    host::add_to_linker(linker, get)?;
    draft::add_to_linker(linker, get)
}
