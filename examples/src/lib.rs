//! Shared glue for the example programs.
