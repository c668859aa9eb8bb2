//! Pure rules of identity and programs: no I/O, unit-tested.

pub mod enrollment;
pub mod identity;
pub mod program;
