//! Pure rules: which e-mails exist and what they say.

pub mod digest;
pub mod feed;
pub mod money;
pub mod templates;
pub mod webhooks;
