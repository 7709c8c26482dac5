//! The statement registry.
