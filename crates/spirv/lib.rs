//! Intentionally empty: this crate exists for the burn feature its manifest turns on.
