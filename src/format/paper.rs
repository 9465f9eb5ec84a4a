//! The master key on paper (`vault key export --paper`), typed back by
//! `vault key import --paper`: numbered lines of eight bytes in hex groups, each with a
//! check of its own, so that a typing mistake is found in the line it is in, and a last
//! line checking the whole key. A key has four lines; one with a content key of its
//! own (after a rotation, repo-format §21) has eight, the content key in lines 5–8.
//! Nothing here is stored in a repository.
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
/// Lines of a master key alone.
pub const LINES: usize = 32 / PER_LINE;
/// Lines of a master key with its content key.
pub const LINES_WITH_CONTENT: usize = 2 * LINES;

/// One typed line's key bytes.
pub type Line = [u8; PER_LINE];

/// What is wrong with a typed line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaperError {
    #[error("line {0}: expected 16 hex digits and a 4-digit check")]
    Malformed(usize),
    #[error("line {0} does not match its check: a digit is mistyped; retype it")]
    Check(usize),
    #[error("the whole-key check {0:?} does not match the lines: retype them")]
    Whole(String),
    #[error("{0} key lines: a paper key has 4 or 8")]
    Count(usize),
}

/// The check of line `n` (1-based): its number is hashed in, so swapped lines fail.
fn line_check(n: usize, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new_derive_key("vault paper key line");
    h.update(&[n as u8]);
    h.update(bytes);
    hex::encode(&h.finalize().as_bytes()[..2])
}

/// Over every line's bytes in order: 32 of them give what four-line keys always had.
fn whole_check(bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new_derive_key("vault paper key whole");
    h.update(bytes);
    hex::encode(&h.finalize().as_bytes()[..4])
}

/// The key as lines to print; `repo_id` names the repository in the first line.
pub fn encode(key: &MasterKey, repo_id: &str) -> String {
    let mut bytes = zeroize::Zeroizing::new(key.as_bytes().to_vec());
    if let Some(content) = key.content_bytes() {
        bytes.extend_from_slice(content);
    }
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
    out += &format!("check: {}\n", whole_check(&bytes));
    out
}

/// Line `n` (1-based) as typed: its "N:" prefix optional, spaces and dashes anywhere,
/// any case; its eight key bytes once its check matches.
pub fn parse_line(n: usize, typed: &str) -> Result<Line, PaperError> {
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

/// The whole-key check as typed, its "check:" word dropped.
fn typed_check(typed: &str) -> &str {
    let typed = typed.trim();
    match typed.split_once(':') {
        Some((word, rest)) if word.trim().eq_ignore_ascii_case("check") => rest.trim(),
        _ => typed,
    }
}

/// Whether `typed` is a whole-key check rather than a key line: what tells a four-line
/// key from an eight-line one as the fifth line is typed.
pub fn is_check(typed: &str) -> bool {
    let t = typed_check(typed);
    t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The key from its checked lines (four, or eight with a content key) and the typed
/// whole-key check ("check:" optional).
pub fn assemble(lines: &[Line], check: &str) -> Result<MasterKey, PaperError> {
    if lines.len() != LINES && lines.len() != LINES_WITH_CONTENT {
        return Err(PaperError::Count(lines.len()));
    }
    let bytes = zeroize::Zeroizing::new(lines.concat());
    let typed = typed_check(check);
    if typed.to_ascii_lowercase() != whole_check(&bytes) {
        return Err(PaperError::Whole(typed.to_string()));
    }
    let half = |from: usize| -> [u8; 32] { std::array::from_fn(|i| bytes[from + i]) };
    let key = MasterKey::from_bytes(half(0));
    Ok(if lines.len() == LINES_WITH_CONTENT {
        key.with_content(half(32))
    } else {
        key
    })
}

/// The key from the printed text whole (as `encode` gives it, or typed the same way).
pub fn decode(text: &str) -> Result<MasterKey, PaperError> {
    let typed: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("vault paper key"))
        .collect();
    let Some((check, rows)) = typed.split_last() else {
        return Err(PaperError::Malformed(1));
    };
    let mut lines = zeroize::Zeroizing::new(Vec::with_capacity(rows.len()));
    for (i, row) in rows.iter().enumerate() {
        lines.push(parse_line(i + 1, row)?);
    }
    if !is_check(check) && rows.len() < LINES_WITH_CONTENT {
        // The text ended inside the key lines: name the first one missing.
        parse_line(rows.len() + 1, check)?;
        return Err(PaperError::Malformed(rows.len() + 2));
    }
    assemble(&lines, check)
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
        assert_eq!(
            decode(&text.lines().take(4).collect::<Vec<_>>().join("\n")).err(),
            Some(PaperError::Malformed(4))
        );
    }

    /// After a rotation: eight lines, the content key in the last four, and a check over
    /// all of them; the fifth line tells the two forms apart.
    #[test]
    fn a_key_with_a_content_key_takes_eight_lines() {
        let content: [u8; 32] = std::array::from_fn(|i| (i * 11 + 5) as u8);
        let rotated = key().with_content(content);
        let text = encode(&rotated, "r");
        assert_eq!(text.lines().count(), 2 + LINES_WITH_CONTENT);
        let back = decode(&text).unwrap();
        assert_eq!(back.as_bytes(), key().as_bytes());
        assert_eq!(back.content_bytes(), Some(&content));
        // Blob ids come out the same: the content key, not the master key, names them.
        assert_eq!(*back.id_key(), *rotated.id_key());
        assert_ne!(*back.id_key(), *key().id_key());

        let lines: Vec<&str> = text.lines().collect();
        assert!(!is_check(lines[5]) && is_check(lines[9]) && is_check("51D0A7F3"));
        // The first four lines with a four-line check do not pass for the master key alone.
        let four = format!(
            "{}\ncheck: {}",
            lines[1..5].join("\n"),
            whole_check(key().as_bytes())
        );
        assert_eq!(decode(&four).unwrap().content_bytes(), None);
        let cut = format!("{}\n{}", lines[1..5].join("\n"), lines[9]);
        assert!(matches!(decode(&cut), Err(PaperError::Whole(_))));
        let mut wrong: Vec<&str> = lines.clone();
        wrong.swap(6, 7);
        assert_eq!(decode(&wrong.join("\n")).err(), Some(PaperError::Check(6)));
        let nine = format!("{}\n{}\n{}", lines[1..9].join("\n"), lines[1], lines[9]);
        assert_eq!(decode(&nine).err(), Some(PaperError::Check(9)));
    }

    /// The four-line form did not change when eight lines came: papers printed before
    /// still type back. The vector is the key of `key()`.
    #[test]
    fn four_line_papers_keep_their_checks() {
        let text = encode(&key(), "r");
        assert_eq!(
            text.lines().last(),
            Some(
                format!(
                    "check: {}",
                    hex::encode(
                        &blake3::derive_key("vault paper key whole", key().as_bytes())[..4]
                    )
                )
                .as_str()
            )
        );
    }
}
