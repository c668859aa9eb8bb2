//! The NATS grants of `deploy/nats/accounts.conf` (and its test copy) against the code: each
//! process may publish exactly the rpc subjects `amba.rpc.<service>.<method>` its code calls.
//!
//! What a process calls is read from its source: every method constant of [`crate::methods`] it
//! names (`use amba_proto::methods::commission as ledger;` … `ledger::PAYOUT_POST`), but its own
//! service's, which it answers. The integration tests run on a NATS server without users, so a
//! missing grant (once `release_held`) would otherwise only show up as a refusal in production.

use crate::methods;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The namespace the shipped configs name (AMBA_NAMESPACE).
const NS: &str = "amba";

/// Every service and its methods, by constant name.
const SERVICES: &[(&str, &[(&str, &str)])] = &[
    (methods::enrollment::SERVICE, methods::enrollment::NAMED),
    (methods::attribution::SERVICE, methods::attribution::NAMED),
    (methods::commission::SERVICE, methods::commission::NAMED),
    (methods::payout::SERVICE, methods::payout::NAMED),
    (methods::notification::SERVICE, methods::notification::NAMED),
];

/// Each NATS user and the source it runs (`tick`, `ops` and `migrate` run the `amba` binary's
/// own commands).
const PROCESSES: &[(&str, &str)] = &[
    ("enrollment", "services/enrollment/src"),
    ("attribution", "services/attribution/src"),
    ("commission", "services/commission/src"),
    ("payout", "services/payout/src"),
    ("notification", "services/notification/src"),
    ("edge", "services/edge/src"),
    ("tick", "app/src"),
    ("ops", "app/src"),
    ("migrate", "app/src"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_rpc_the_code_calls_is_granted_to_its_caller_and_nothing_more() -> Result<(), String> {
    let calls = calls_in_code()?;
    // The scan sees the calls at all (the edge's early release, once missing from the grants).
    assert!(
        calls["edge"].contains_key(&("commission".to_owned(), "release_held".to_owned())),
        "the scan of services/edge/src found no call of commission.release_held: {:?}",
        calls["edge"].keys()
    );
    // Every method has a caller: else it is dead, or called in a way the scan does not know.
    for (service, named) in SERVICES {
        for (name, method) in *named {
            let key = ((*service).to_owned(), (*method).to_owned());
            assert!(
                calls.values().any(|c| c.contains_key(&key)),
                "no code calls {service}.{method} by name (`{service}::{name}` or an alias of \
                 amba_proto::methods::{service}): remove it, or teach this scan how it is called"
            );
        }
    }

    for config in ["accounts.conf", "test-accounts.conf"] {
        let path = repo().join("deploy/nats").join(config);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let users = users(&parse(&text)?);
        let mut problems = Vec::new();
        for (user, _) in PROCESSES {
            let Some(publish) = users.get(*user) else {
                problems.push(format!("no user {user}"));
                continue;
            };
            let needed = &calls[*user];
            for ((service, method), file) in needed {
                if !publish.grants(&format!("{NS}.rpc.{service}.{method}")) {
                    problems.push(format!(
                        "{user} calls {service}.{method} ({file}) but may not publish {NS}.rpc.{service}.{method}"
                    ));
                }
            }
            for (service, named) in SERVICES {
                for (_, method) in *named {
                    let key = ((*service).to_owned(), (*method).to_owned());
                    if publish.grants(&format!("{NS}.rpc.{service}.{method}")) && !needed.contains_key(&key) {
                        problems.push(format!(
                            "{user} may publish {NS}.rpc.{service}.{method}, which its code never calls"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "deploy/nats/{config}:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// For each user: the `(service, method)`s its code calls, each with a file that does.
type Calls = BTreeMap<&'static str, BTreeMap<(String, String), String>>;

fn calls_in_code() -> Result<Calls, String> {
    let mut found = BTreeMap::new();
    for (user, dir) in PROCESSES {
        let mut files = Vec::new();
        rust_files(&repo().join(dir), &mut files)?;
        if files.is_empty() {
            return Err(format!("no Rust source under {dir}"));
        }
        let mut calls = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            for (service, name) in method_names(&text) {
                // A service names its own methods to answer them.
                if service == *user {
                    continue;
                }
                let method = SERVICES
                    .iter()
                    .find(|(s, _)| *s == service)
                    .and_then(|(_, named)| named.iter().find(|(n, _)| *n == name))
                    .map(|(_, method)| (*method).to_owned())
                    .ok_or_else(|| format!("{}: {service}::{name} is no method", file.display()))?;
                let shown = file.strip_prefix(repo()).unwrap_or(&file).display().to_string();
                calls.entry((service, method)).or_insert(shown);
            }
        }
        found.insert(*user, calls);
    }
    Ok(found)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The `(service, CONSTANT)`s of `amba_proto::methods` a source file names (`SERVICE` aside):
/// through a path, an import of the constant, or an alias of a service's module.
fn method_names(source: &str) -> BTreeSet<(String, String)> {
    // Whole-line comments may name methods without calling them; whitespace is one space, so a
    // `use` over several lines reads as one.
    let text = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    const ROOT: &str = "amba_proto::methods::";
    let mut names = BTreeSet::new();
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    let name = |service: &str, constant: &str, names: &mut BTreeSet<(String, String)>| {
        if constant != "SERVICE" && is_constant(constant) {
            names.insert((service.to_owned(), constant.to_owned()));
        }
    };
    for (at, _) in text.match_indices(ROOT) {
        let rest = &text[at + ROOT.len()..];
        let in_use = text[..at].trim_end().ends_with("use");
        if in_use {
            let import = rest.split(';').next().unwrap_or_default();
            let items: Vec<&str> = match import.strip_prefix('{') {
                Some(list) => list.trim_end_matches('}').split(',').collect(),
                None => vec![import],
            };
            for item in items {
                let mut words = item.split(" as ").map(str::trim);
                let path = words.next().unwrap_or_default();
                let alias = words.next();
                match path.split_once("::") {
                    Some((service, constant)) => name(service, constant, &mut names),
                    None if !path.is_empty() => {
                        aliases.insert(alias.unwrap_or(path).to_owned(), path.to_owned());
                    }
                    None => {}
                }
            }
        } else {
            let service = ident_at(rest);
            if let Some(after) = rest[service.len()..].strip_prefix("::") {
                name(service, ident_at(after), &mut names);
            }
        }
    }
    // `alias::CONSTANT` where `alias` starts the path (not the tail of a longer one).
    let bytes = text.as_bytes();
    for (alias, service) in &aliases {
        for (at, _) in text.match_indices(&format!("{alias}::")) {
            let head =
                at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':');
            if head {
                name(service, ident_at(&text[at + alias.len() + 2..]), &mut names);
            }
        }
    }
    names
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn is_constant(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A user's publish permissions.
#[derive(Debug, Default)]
struct Publish {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Publish {
    fn grants(&self, subject: &str) -> bool {
        self.allow.iter().any(|p| covers(p, subject)) && !self.deny.iter().any(|p| covers(p, subject))
    }
}

/// Whether NATS pattern `pattern` matches the subject.
fn covers(pattern: &str, subject: &str) -> bool {
    let (p, s): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), subject.split('.').collect());
    for (n, token) in p.iter().enumerate() {
        if *token == ">" {
            return s.len() > n;
        }
        match s.get(n) {
            Some(t) if *token == "*" || token == t => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}

/// A value of a nats-server config: enough of the format for the shipped files (`{}` maps, `[]`
/// lists, `key: value`, `key = value` or `key value`, quoted and bare strings, `#` and `//`
/// comments, newlines or commas between entries).
#[derive(Debug, Clone)]
enum Conf {
    Text(String),
    List(Vec<Conf>),
    Map(Vec<(String, Conf)>),
}

impl Conf {
    fn get(&self, key: &str) -> Option<&Conf> {
        match self {
            Conf::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn texts(&self) -> Vec<String> {
        match self {
            Conf::Text(t) => vec![t.clone()],
            Conf::List(items) => items.iter().flat_map(Conf::texts).collect(),
            Conf::Map(_) => Vec::new(),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Open(char),
    Close(char),
    Assign,
    Sep,
    Text(String),
}

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' => i += 1,
            '#' => i = (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len()),
            '/' if chars.get(i + 1) == Some(&'/') => {
                i = (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len());
            }
            '\n' | ',' | ';' => {
                out.push(Token::Sep);
                i += 1;
            }
            '{' | '[' => {
                out.push(Token::Open(c));
                i += 1;
            }
            '}' | ']' => {
                out.push(Token::Close(c));
                i += 1;
            }
            ':' | '=' => {
                out.push(Token::Assign);
                i += 1;
            }
            '"' | '\'' => {
                let end = (i + 1..chars.len()).find(|&j| chars[j] == c).unwrap_or(chars.len());
                out.push(Token::Text(chars[i + 1..end].iter().collect()));
                i = end + 1;
            }
            _ => {
                let end = (i..chars.len())
                    .find(|&j| " \t\r\n,;{}[]:=#".contains(chars[j]))
                    .unwrap_or(chars.len());
                out.push(Token::Text(chars[i..end].iter().collect()));
                i = end;
            }
        }
    }
    out
}

fn parse(text: &str) -> Result<Conf, String> {
    let tokens = tokens(text);
    let mut at = 0;
    entries(&tokens, &mut at, None)
}

fn skip_separators(tokens: &[Token], at: &mut usize) {
    while tokens.get(*at) == Some(&Token::Sep) {
        *at += 1;
    }
}

fn entries(tokens: &[Token], at: &mut usize, close: Option<char>) -> Result<Conf, String> {
    let mut found = Vec::new();
    loop {
        skip_separators(tokens, at);
        match tokens.get(*at) {
            None => break,
            Some(Token::Close(c)) if Some(*c) == close => {
                *at += 1;
                break;
            }
            Some(Token::Text(key)) => {
                *at += 1;
                if tokens.get(*at) == Some(&Token::Assign) {
                    *at += 1;
                }
                found.push((key.clone(), value(tokens, at)?));
            }
            Some(other) => return Err(format!("unexpected {other:?} in a NATS config")),
        }
    }
    Ok(Conf::Map(found))
}

fn value(tokens: &[Token], at: &mut usize) -> Result<Conf, String> {
    let token = tokens.get(*at);
    *at += 1;
    match token {
        Some(Token::Open('{')) => entries(tokens, at, Some('}')),
        Some(Token::Open('[')) => {
            let mut items = Vec::new();
            loop {
                skip_separators(tokens, at);
                if tokens.get(*at) == Some(&Token::Close(']')) {
                    *at += 1;
                    break;
                }
                if *at >= tokens.len() {
                    return Err("unclosed list in a NATS config".to_owned());
                }
                items.push(value(tokens, at)?);
            }
            Ok(Conf::List(items))
        }
        Some(Token::Text(t)) => Ok(Conf::Text(t.clone())),
        other => Err(format!("unexpected {other:?} in a NATS config")),
    }
}

/// Every user of every account, with its publish permissions (`publish: [..]` is its allow list).
fn users(conf: &Conf) -> BTreeMap<String, Publish> {
    let mut found = BTreeMap::new();
    let Some(Conf::Map(accounts)) = conf.get("accounts") else {
        return found;
    };
    for (_, account) in accounts {
        let Some(Conf::List(users)) = account.get("users") else {
            continue;
        };
        for user in users {
            let Some(Conf::Text(name)) = user.get("user") else {
                continue;
            };
            let publish = user.get("permissions").and_then(|p| p.get("publish"));
            let permissions = match publish {
                Some(rules @ Conf::Map(_)) => Publish {
                    allow: rules.get("allow").map(Conf::texts).unwrap_or_default(),
                    deny: rules.get("deny").map(Conf::texts).unwrap_or_default(),
                },
                Some(list) => Publish {
                    allow: list.texts(),
                    deny: Vec::new(),
                },
                // No publish permissions: the user may publish anything.
                None => Publish {
                    allow: vec![">".to_owned()],
                    deny: Vec::new(),
                },
            };
            found.insert(name.clone(), permissions);
        }
    }
    found
}

#[test]
fn the_scan_reads_every_way_code_names_a_method() {
    let source = "use amba_proto::methods::{attribution, commission as ledger};\n\
                  use amba_proto::methods::payout::RUNS;\n\
                  use amba_proto::methods::notification;\n\
                  // ledger::PAYOUT_VOID in a comment is no call\n\
                  fn f() { call(ledger::SERVICE, ledger::PAYOUT_POST); call(attribution::LIST);\n\
                  call(amba_proto::methods::enrollment::SIGNUP); notification::LIST; other_ledger::BALANCE; }";
    let found: Vec<String> = method_names(source)
        .into_iter()
        .map(|(s, c)| format!("{s}::{c}"))
        .collect();
    assert_eq!(
        found,
        [
            "attribution::LIST",
            "commission::PAYOUT_POST",
            "enrollment::SIGNUP",
            "notification::LIST",
            "payout::RUNS"
        ]
    );
}

#[test]
fn nats_patterns_and_permissions() -> Result<(), String> {
    assert!(covers("amba.rpc.commission.*", "amba.rpc.commission.release_held"));
    assert!(covers("amba.rpc.>", "amba.rpc.commission.release_held"));
    assert!(!covers("amba.rpc.commission.*", "amba.rpc.commission"));
    assert!(!covers(
        "amba.rpc.commission.balance",
        "amba.rpc.commission.release_held"
    ));
    let conf = parse(
        "accounts { A { users: [\n { user: edge, password: $P\n permissions: { publish: { allow: [\"a.*\"]\n \
         deny: [\"a.b\"] } } }\n { user: free } ] } }",
    )?;
    let users = users(&conf);
    assert!(users["edge"].grants("a.c") && !users["edge"].grants("a.b"));
    assert!(users["free"].grants("a.b"));
    Ok(())
}
