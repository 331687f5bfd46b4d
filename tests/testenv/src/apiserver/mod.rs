//! The fake API server.
