//! Outbox entries and their delivery record (DESIGN.md §4).
