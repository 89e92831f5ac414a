//! Empty: this package only pins the adapter crate (see Cargo.toml).
