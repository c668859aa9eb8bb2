//! Long-lived tasks that own state: the group-commit writers of the report path.

pub mod accrue;
pub mod writer;
