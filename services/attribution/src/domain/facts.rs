//! What attribution knows of an enrollment, from enrollment's events: shared by the report's
//! decision and the weighing of touchpoints.

#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentFacts {
    pub enrollment_id: String,
    pub program_id: String,
    pub affiliate_org_id: String,
    pub status: String,
    pub emails: Vec<String>,
}
