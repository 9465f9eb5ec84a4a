//! The master key on paper (`vault key export --paper`), typed back by
//! `vault key import --paper`: four numbered lines of eight bytes in hex groups, each
//! with a check of its own, so that a typing mistake is found in the line it is in, and
//! a last line checking the whole key. Nothing here is stored in a repository.
//!
//! ```text
//! vault paper key, repository 3fa2c1d09b8e7f60
//! 1: 0a1b 2c3d 4e5f 6071  - 9c2e
//! 2: ...
//! 3: ...
//! 4: ...
//! check: 51d0a7f3
//! ```

use super::crypto::MasterKey;

/// Key bytes per line.
const PER_LINE: usize = 8;
pub const LINES: usize = 32 / PER_LINE;

/// What is wrong with a typed line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaperError {
    #[error("line {0}: expected 16 hex digits and a 4-digit check")]
    Malformed(usize),
    #[error("line {0} does not match its check: a digit is mistyped; retype it")]
    Check(usize),
    #[error("the whole-key check {0:?} does not match the lines: retype them")]
    Whole(String),
}

/// The check of line `n` (1-based): its number is hashed in, so swapped lines fail.
fn line_check(n: usize, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new_derive_key("vault paper key line");
    h.update(&[n as u8]);
    h.update(bytes);
    hex::encode(&h.finalize().as_bytes()[..2])
}

fn whole_check(key: &[u8; 32]) -> String {
    let h = blake3::derive_key("vault paper key whole", key);
    hex::encode(&h[..4])
}

/// The key as lines to print; `repo_id` names the repository in the first line.
pub fn encode(key: &MasterKey, repo_id: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = format!(
        "vault paper key, repository {}\n",
        &repo_id[..repo_id.len().min(16)]
    );
    for (i, chunk) in bytes.chunks(PER_LINE).enumerate() {
        let h = hex::encode(chunk);
        let groups: Vec<&str> = (0..h.len()).step_by(4).map(|j| &h[j..j + 4]).collect();
        out += &format!(
            "{}: {}  - {}\n",
            i + 1,
            groups.join(" "),
            line_check(i + 1, chunk)
        );
    }
    out += &format!("check: {}\n", whole_check(bytes));
    out
}

/// Line `n` (1-based) as typed: its "N:" prefix optional, spaces and dashes anywhere,
/// any case; its eight key bytes once its check matches.
pub fn parse_line(n: usize, typed: &str) -> Result<[u8; PER_LINE], PaperError> {
    let mut text = typed.trim();
    // Any line number is dropped: the check, which hashes `n`, finds a line out of place.
    if let Some((prefix, rest)) = text.split_once(':')
        && prefix.trim().bytes().all(|b| b.is_ascii_digit())
    {
        text = rest;
    }
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.len() != 2 * PER_LINE + 4 {
        return Err(PaperError::Malformed(n));
    }
    let (data, check) = digits.split_at(2 * PER_LINE);
    let mut bytes = [0u8; PER_LINE];
    hex::decode_to_slice(data, &mut bytes).map_err(|_| PaperError::Malformed(n))?;
    if hex::decode(check).is_err() {
        return Err(PaperError::Malformed(n));
    }
    if line_check(n, &bytes) != check {
        return Err(PaperError::Check(n));
    }
    Ok(bytes)
}

/// The key from its checked lines and the typed whole-key check ("check:" optional).
pub fn assemble(lines: &[[u8; PER_LINE]; LINES], check: &str) -> Result<MasterKey, PaperError> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    for (i, l) in lines.iter().enumerate() {
        key[i * PER_LINE..(i + 1) * PER_LINE].copy_from_slice(l);
    }
    let typed = check.trim();
    let typed = match typed.split_once(':') {
        Some((word, rest)) if word.trim().eq_ignore_ascii_case("check") => rest.trim(),
        _ => typed,
    };
    if typed.to_ascii_lowercase() != whole_check(&key) {
        return Err(PaperError::Whole(typed.to_string()));
    }
    Ok(MasterKey::from_bytes(*key))
}

/// The key from the printed text whole (as `encode` gives it, or typed the same way).
pub fn decode(text: &str) -> Result<MasterKey, PaperError> {
    let mut rest = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("vault paper key"));
    let mut lines = [[0u8; PER_LINE]; LINES];
    for (i, line) in lines.iter_mut().enumerate() {
        *line = parse_line(i + 1, rest.next().unwrap_or_default())?;
    }
    assemble(&lines, rest.next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(std::array::from_fn(|i| (i * 37 + 11) as u8))
    }

    #[test]
    fn printed_lines_read_back() {
        let text = encode(&key(), &"ab".repeat(32));
        assert!(text.starts_with("vault paper key, repository abababababababab\n"));
        assert_eq!(text.lines().count(), 2 + LINES);
        assert_eq!(decode(&text).unwrap().as_bytes(), key().as_bytes());
        // Typed loosely: no numbers, other spacing, upper case.
        let loose: String = text
            .lines()
            .map(|l| l.split_once(": ").map_or(l, |(_, r)| r).to_uppercase() + "\n")
            .collect();
        assert_eq!(decode(&loose).unwrap().as_bytes(), key().as_bytes());
    }

    #[test]
    fn a_mistyped_digit_is_found_in_its_line() {
        let text = encode(&key(), "r");
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let third = &mut lines[3];
        let at = third.find(' ').unwrap() + 3;
        let c = third.as_bytes()[at];
        third.replace_range(at..at + 1, if c == b'0' { "1" } else { "0" });
        assert_eq!(decode(&lines.join("\n")).err(), Some(PaperError::Check(3)));
    }

    #[test]
    fn swapped_lines_and_a_wrong_whole_check_fail() {
        let text = encode(&key(), "r");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(1, 2);
        assert_eq!(decode(&lines.join("\n")).err(), Some(PaperError::Check(1)));
        let mut lines: Vec<&str> = text.lines().collect();
        lines[5] = "check: 00000000";
        assert!(matches!(
            decode(&lines.join("\n")),
            Err(PaperError::Whole(_))
        ));
        assert_eq!(
            decode("vault paper key\n1: 12").err(),
            Some(PaperError::Malformed(1))
        );
    }
}
