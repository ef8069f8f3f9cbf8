//! Tests for this area land with its issue.
