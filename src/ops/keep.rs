//! A retention policy as people write it: one type for the command line (`--keep-daily
//! 7`), the config file (`keep-daily = 7` in a profile's `[retention]`) and programs
//! using the library, turned into a [`Policy`] in one place.

use serde::Deserialize;

use super::forget::{GroupBy, PERIODS, Policy, parse_span};
use crate::error::VaultError;

/// Which snapshots to keep. Every rule keeps what it asks for; a snapshot is kept when
/// any rule keeps it. Spans are written like `30d`, `2w`, `6m`, `1y`.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeepOptions {
    /// Keep the N newest snapshots
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_hourly: Option<usize>,
    /// Keep the newest snapshot of each of the last N days that have one
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_weekly: Option<usize>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_monthly: Option<usize>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub keep_yearly: Option<usize>,
    /// Keep every snapshot within this span of the group's newest (e.g. 30d, 2w, 6m, 1y)
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within: Option<String>,
    /// Keep one snapshot per hour within this span of the newest
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within_hourly: Option<String>,
    /// Keep one snapshot per day within this span of the newest
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within_daily: Option<String>,
    /// Keep one snapshot per week within this span of the newest
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within_weekly: Option<String>,
    /// Keep one snapshot per month within this span of the newest
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within_monthly: Option<String>,
    /// Keep one snapshot per year within this span of the newest
    #[cfg_attr(feature = "cli", arg(long, value_name = "SPAN"))]
    pub keep_within_yearly: Option<String>,
    /// Keep every snapshot with this tag (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "TAG"))]
    #[serde(default)]
    pub keep_tag: Vec<String>,
    /// Apply the policy to each group of snapshots with equal host, paths and/or tags
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "host,paths", value_name = "FIELDS")
    )]
    #[serde(default = "host_and_paths", deserialize_with = "group_by")]
    pub group_by: GroupBy,
}

fn host_and_paths() -> GroupBy {
    GroupBy {
        host: true,
        paths: true,
        tags: false,
    }
}

fn group_by<'de, D: serde::Deserializer<'de>>(d: D) -> Result<GroupBy, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// A span option's value, or a usage error naming the option.
fn span(option: &str, v: &Option<String>) -> Result<Option<jiff::Span>, VaultError> {
    v.as_deref()
        .map(|s| parse_span(s).map_err(|e| VaultError::Usage(format!("--{option}: {e}"))))
        .transpose()
}

impl KeepOptions {
    /// The policy these options describe; an invalid span is a usage error naming it.
    pub fn policy(&self) -> Result<Policy, VaultError> {
        let mut p = Policy {
            last: self.keep_last,
            within: span("keep-within", &self.keep_within)?,
            tags: self.keep_tag.clone(),
            ..Default::default()
        };
        let counts = [
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let spans = [
            &self.keep_within_hourly,
            &self.keep_within_daily,
            &self.keep_within_weekly,
            &self.keep_within_monthly,
            &self.keep_within_yearly,
        ];
        for ((period, n), s) in PERIODS.iter().zip(counts).zip(spans) {
            if let Some(n) = n {
                p.periods.insert(*period, n);
            }
            if let Some(sp) = span(&format!("keep-within-{}", period.name()), s)? {
                p.within_periods.insert(*period, sp);
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_table_reads_as_the_flags_do() {
        let k: KeepOptions = toml::from_str(
            "keep-daily = 7\nkeep-within = \"2w\"\nkeep-tag = [\"x\"]\ngroup-by = \"host\"",
        )
        .unwrap();
        let p = k.policy().unwrap();
        assert_eq!(p.periods.len(), 1);
        assert!(p.within.is_some());
        assert_eq!(p.tags, ["x"]);
        assert!(k.group_by.host && !k.group_by.paths);
        let defaults: KeepOptions = toml::from_str("keep-last = 1").unwrap();
        assert!(defaults.group_by.host && defaults.group_by.paths);
    }

    #[test]
    fn unknown_keys_and_bad_spans_are_refused_by_name() {
        assert!(toml::from_str::<KeepOptions>("keep-dayly = 7").is_err());
        let k: KeepOptions = toml::from_str("keep-within-daily = \"soon\"").unwrap();
        let e = k.policy().unwrap_err().to_string();
        assert!(e.contains("--keep-within-daily"), "{e}");
    }
}
