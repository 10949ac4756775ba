//! The server's flows: each decides one operation (its rules, in order, and the transaction
//! that writes its outcome), as a function of the server's state and a typed request.
//! Handlers decode the request, call one flow and encode its answer; the problem a flow
//! refuses with is [`crate::api::problem::ApiError`] (a [`vouch_proto::ProblemCode`] and a
//! detail), turned into HTTP in one place.

pub mod agent_decisions;
pub mod attest;
pub mod authorize;
pub mod devices;
pub mod enroll;
pub mod issue;
pub mod operator_tokens;
pub mod peers;
pub mod rate;
pub mod reload;
pub mod renew;
pub mod revoke;
