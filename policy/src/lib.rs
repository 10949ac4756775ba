//! Vouch policy: a default-deny Cedar policy engine for zones, trust levels, data types and
//! protocols.
//!
//! - [`index`]: the scope index that lets a decision evaluate only the policies that can
//!   apply, with decisions identical to Cedar's full evaluation.
//! - [`engine`]: decisions: the matching policies' distinct conditions evaluated once each by
//!   Cedar's evaluator and combined by Cedar's rule (Cedar's authorizer over the matching
//!   policies when a condition errs), with the deciding policies, errors and annotations
//!   (such as `@rate_limit`) in the answer.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod cases;
pub mod engine;
pub mod index;
pub mod json;
pub mod local;
pub mod model;
pub mod synthetic;
