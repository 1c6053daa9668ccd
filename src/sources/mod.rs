//! Sources: external inputs as differential collections, one file per connector.

pub mod kafka;
pub mod postgres;
