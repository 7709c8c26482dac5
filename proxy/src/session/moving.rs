//! Moving a session to another backend.
