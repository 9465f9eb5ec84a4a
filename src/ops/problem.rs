//! Problems that check, audit and verify find: one per damaged object, with the places
//! it affects.

use std::collections::HashMap;

use serde::Serialize;

use crate::format::Id;

/// How many affected paths one problem lists before it only counts them.
const AFFECTS_SHOWN: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is damaged: "pack", "index", "snapshot", "tree blob", "data blob", "key", ...
    pub object: String,
    /// Its full id, when it has one.
    pub id: Option<String>,
    /// What is wrong with it.
    pub what: String,
    /// Where it matters: "snapshot 1a2b3c4d: /home/me/file".
    pub affects: Vec<String>,
    /// Affected places beyond those listed.
    pub more_affected: u64,
}

impl Problem {
    pub fn line(&self) -> String {
        let id = self.id.as_deref().map(|i| &i[..8.min(i.len())]);
        let mut s = match id {
            Some(id) => format!("{} {id}: {}", self.object, self.what),
            None => format!("{}: {}", self.object, self.what),
        };
        if !self.affects.is_empty() {
            s.push_str(&format!("; affects {}", self.affects.join(", ")));
            if self.more_affected > 0 {
                s.push_str(&format!(" and {} more", self.more_affected));
            }
        }
        s
    }
}

/// Problems keyed by the object they concern, so each is reported once.
#[derive(Default)]
pub struct Problems {
    list: Vec<Problem>,
    by_key: HashMap<String, usize>,
}

impl Problems {
    pub fn add(&mut self, object: &str, id: Option<&Id>, what: impl Into<String>) -> usize {
        let key = format!("{object} {}", id.map(Id::to_hex).unwrap_or_default());
        let what = what.into();
        if let Some(&i) = self.by_key.get(&key) {
            // Several findings about one object make one problem.
            let p = &mut self.list[i];
            if !p.what.contains(&what) {
                p.what = format!("{}; {what}", p.what);
            }
            return i;
        }
        self.list.push(Problem {
            object: object.to_string(),
            id: id.map(Id::to_hex),
            what,
            affects: Vec::new(),
            more_affected: 0,
        });
        self.by_key.insert(key, self.list.len() - 1);
        self.list.len() - 1
    }

    pub fn affect(&mut self, i: usize, place: String) {
        let p = &mut self.list[i];
        if p.affects.len() < AFFECTS_SHOWN {
            p.affects.push(place);
        } else {
            p.more_affected += 1;
        }
    }

    pub fn find(&self, object: &str, id: &Id) -> Option<usize> {
        self.by_key
            .get(&format!("{object} {}", id.to_hex()))
            .copied()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
