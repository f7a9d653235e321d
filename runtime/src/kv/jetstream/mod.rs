//! The cluster's backend (`serve --cluster`): every bucket a JetStream key-value bucket of its
//! own (`handoff_kv_` and the hex of the bucket's id), so every node reads and writes the same
//! data.
//!
//! * **Keys** are `k` and the base64url of the guest's key (NATS keys allow few characters).
//!   Each value is stored as `kv::format` encodes an entry (its expiry, then the bytes), and
//!   its message carries the expiry in a header as well (`Handoff-Expires-At`); its revision is
//!   the message's stream sequence, which only grows (ABA-safe).
//! * **Listings** (`listing`) take their keys from a sorted index of the bucket's keys that
//!   each node keeps (`index`): before a page, one request for the stream's last sequence, and
//!   a headers-only pass over what was written since, if anything was; values are read only for
//!   the entries a scan returns. A bucket too large to index is listed by a headers-only pass
//!   over every key's last message per page. Either way a page costs a few requests however
//!   large the bucket.
//! * **Reads** ask the stream's leader for the key's last message (not a replica's direct get,
//!   which may lag), so a read that starts after a write was acknowledged sees it.
//! * **Writes** are compare-and-swaps on the key's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence`): read, check the condition, compute (an increment
//!   adds to what was read), publish expecting what was read; if another writer got there
//!   first, read again and retry. So conditions and increments are atomic across nodes.
//!   JetStream acknowledges a write once its replicas have it (durable).
//! * **Usage** (for quotas) is kept in the bucket's `meta` key, changed by compare-and-swaps of
//!   its own. A write that adds a key or bytes *reserves* them first: the reservation checks
//!   the quota against the usage it swaps, so writes racing from several nodes cannot pass a
//!   quota together; if the key's own swap then loses, the reservation is given back. A write
//!   that frees a key or bytes gives them back after it lands. So usage never counts less than
//!   the bucket holds: a node that dies between the two swaps leaves it counting that one write
//!   too much (a quota then refuses early, never late).
//! * **Expired entries** read as absent at once. One node (the cluster's leader) deletes them
//!   ([`sweep_while`]): every [`SWEEP_EVERY`] it reads the next `SWEEP_BUCKETS` buckets in
//!   turn, deletes each expired entry with a compare-and-swap on the sequence it read (a key
//!   written again meanwhile is left alone), and gives their usage back.

mod index;
mod layout;
mod listing;
mod store;
mod sweep;

pub use store::{JetStreamKv, too_large};
pub use sweep::{SWEEP_EVERY, sweep_while};
