//! The atomics used by the crate's lock-free code ([`crate::redirector`]).
//!
//! Normal builds re-export `core::sync::atomic`; builds with `--cfg loom` re-export loom's
//! model-checked atomics instead, so exactly the same code runs under loom's exhaustive scheduler
//! (the pattern crossbeam and tokio use). Nothing outside this module names an atomic type
//! directly.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
