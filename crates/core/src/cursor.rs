//! Opaque keyset cursors for list tools: the last key of a page, base64url-encoded so clients
//! treat it as a token rather than something to build by hand.

use crate::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;

pub fn encode(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_key.as_bytes())
}

/// The key after which the next page starts; an empty cursor means the first page.
pub fn decode(cursor: &str) -> Result<Option<String>, ApiError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("cursor is not one this server issued"))
}

/// A page size within bounds (0 means the default).
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode(&encode("prg_123")).ok(), Some(Some("prg_123".to_owned())));
        assert_eq!(decode("").ok(), Some(None));
        assert!(decode("%%%").is_err());
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(10_000), MAX_PAGE);
        assert_eq!(page_size(7), 7);
    }
}
