//! secateur's actors and supervisor (DESIGN.md §3). Today: the Critic's pure rule engine
//! ([`critic_rules`]); the ractor actors that use it come next.

pub mod critic_rules;
