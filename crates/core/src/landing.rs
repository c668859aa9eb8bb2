//! Where affiliate links may send visitors: an `https` page on a host that is not the platform's
//! own. The rule is checked when a program's `landing_url` is set and again before `/r/{code}`
//! redirects, so a URL stored before the rule (or one that slipped past a check) never turns an
//! affiliate link into a redirect to plain HTTP or back onto the platform itself.
//!
//! URLs are parsed the way browsers parse them (WHATWG), so the host judged here is the host a
//! browser following the redirect would visit (`https://a.example\@b.example` is `a.example`).

use crate::ApiError;
use crate::limits::MAX_URL_CHARS;
use serde_json::json;

/// The host of `url` as a browser reads it: lower case, IDNA, IP addresses canonical, no
/// trailing dot. `None` when `url` is not an absolute URL with a host.
pub fn host_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    parsed.host_str().map(normal_host).filter(|h| !h.is_empty())
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A landing URL: absolute `https`, naming a host other than `platform_host` (the host of
/// `AMBA_PUBLIC_URL`), without a user name or password, whitespace or control characters, at
/// most 2,048 characters. Returns it trimmed; the refusal is `INVALID_ARGUMENT` naming
/// `landing_url`.
pub fn check(url: &str, platform_host: Option<&str>) -> Result<String, ApiError> {
    let url = url.trim();
    let refuse = |why: String| {
        ApiError::invalid(format!("landing_url {why}")).with_details(json!({ "argument": "landing_url" }))
    };
    let example = "such as https://example.com/pricing";
    if url.chars().count() > MAX_URL_CHARS {
        return Err(refuse(format!("is longer than {MAX_URL_CHARS} characters")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse(format!(
            "must be an absolute https URL {example}, without spaces or control characters"
        )));
    }
    let parsed = url::Url::parse(url).map_err(|_| refuse(format!("must be an absolute https URL {example}")))?;
    if parsed.scheme() != "https" {
        return Err(refuse(format!(
            "must use https ({example}): affiliate links send visitors to secure pages only"
        )));
    }
    let Some(host) = parsed.host_str().map(normal_host).filter(|h| !h.is_empty()) else {
        return Err(refuse(format!("must name a host, {example}")));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse("must not contain a user name or password".to_owned()));
    }
    if platform_host.map(normal_host).is_some_and(|own| own == host) {
        return Err(refuse(format!(
            "must be a page of your own site, not of this platform ({host})"
        )));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        check(url, Some("amba.example.com")).is_err()
    }

    #[test]
    fn only_https_pages_of_other_hosts() {
        assert_eq!(
            check(" https://acme.example/pricing?plan=pro ", Some("amba.example.com")).ok(),
            Some("https://acme.example/pricing?plan=pro".to_owned())
        );
        assert!(check("https://acme.example", None).is_ok());
        for url in [
            "http://acme.example/",
            "HTTP://acme.example/",
            "javascript:alert(1)",
            "ftp://acme.example/",
            "https://",
            "//acme.example/",
            "/pricing",
            "https://user:pw@acme.example/",
            "https://acme.example/a b",
            "https://amba.example.com/r/CODE",
            "https://AMBA.example.com./x",
            "https://amba.example.com:8443/",
            "https:\\\\amba.example.com/",
        ] {
            assert!(refused(url), "{url} must be refused");
        }
        // A browser reads the backslash as a path separator: the host is acme.example.
        assert!(check("https://acme.example\\@amba.example.com/", Some("amba.example.com")).is_ok());
        assert!(refused(&format!("https://acme.example/{}", "a".repeat(2_048))));
        let err = check("http://acme.example/", None).err();
        assert!(err.is_some_and(
            |e| e.message.starts_with("landing_url must use https") && e.details["argument"] == "landing_url"
        ));
    }

    #[test]
    fn hosts_are_read_as_a_browser_reads_them() {
        assert_eq!(
            host_of("https://Amba.Example.COM.:8443/x").as_deref(),
            Some("amba.example.com")
        );
        assert_eq!(host_of("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("https://0x7f.1/").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("nonsense"), None);
        assert!(check("https://0x7f.1/", Some("127.0.0.1")).is_err());
    }
}
