//! Configuration spaces: named fields, each with an ordered list of values.
//!
//! A configuration is one index per field. Neighbours are the adjacent
//! values of one field, so a field listed in powers of two (threads 64,
//! 128, 256) moves ×2/÷2 and a field listed by one (pipeline stages 2, 3,
//! 4) moves ±1 — the steps Inductor's coordinate-descent tuner takes.

use std::fmt;

/// One tunable field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name (`threads`, `stages`, `tile`, ...).
    pub name: String,
    /// Its values, in the order neighbours are taken.
    pub values: Vec<i64>,
}

impl Field {
    /// A field over `values` (which must not be empty).
    pub fn new(name: impl Into<String>, values: impl Into<Vec<i64>>) -> Field {
        Field {
            name: name.into(),
            values: values.into(),
        }
    }

    /// `start, 2·start, 4·start, ...` up to `end` inclusive.
    pub fn powers_of_two(name: impl Into<String>, start: i64, end: i64) -> Field {
        let mut values = Vec::new();
        let mut v = start.max(1);
        while v <= end {
            values.push(v);
            v *= 2;
        }
        Field::new(name, values)
    }
}

/// A configuration: one value index per field of its space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Config(pub Vec<usize>);

/// The fields a kernel kind can be tuned over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// The fields, in a fixed order.
    pub fields: Vec<Field>,
}

impl ConfigSpace {
    /// A space over `fields`.
    pub fn new(fields: Vec<Field>) -> ConfigSpace {
        ConfigSpace { fields }
    }

    /// The configuration whose values are `values` (one per field), if every
    /// value is one the field lists.
    pub fn config_of(&self, values: &[i64]) -> Option<Config> {
        if values.len() != self.fields.len() {
            return None;
        }
        self.fields
            .iter()
            .zip(values)
            .map(|(f, v)| f.values.iter().position(|x| x == v))
            .collect::<Option<Vec<usize>>>()
            .map(Config)
    }

    /// The values of `config`, one per field.
    pub fn values(&self, config: &Config) -> Vec<i64> {
        self.fields
            .iter()
            .zip(&config.0)
            .map(|(f, &i)| f.values[i])
            .collect()
    }

    /// Configurations one step away along exactly one field.
    pub fn neighbours(&self, config: &Config) -> Vec<Config> {
        let mut out = Vec::new();
        for (k, field) in self.fields.iter().enumerate() {
            let i = config.0[k];
            for j in [i.checked_sub(1), Some(i + 1)].into_iter().flatten() {
                if j < field.values.len() {
                    let mut c = config.clone();
                    c.0[k] = j;
                    out.push(c);
                }
            }
        }
        out
    }

    /// Every configuration at most one step away along each field at once
    /// (the "check all directions" neighbourhood), `config` excluded.
    pub fn all_directions(&self, config: &Config) -> Vec<Config> {
        let mut out = vec![config.clone()];
        for (k, field) in self.fields.iter().enumerate() {
            let mut next = Vec::new();
            for c in &out {
                let i = c.0[k];
                for j in [i.checked_sub(1), Some(i), Some(i + 1)]
                    .into_iter()
                    .flatten()
                {
                    if j < field.values.len() {
                        let mut d = c.clone();
                        d.0[k] = j;
                        next.push(d);
                    }
                }
            }
            out = next;
        }
        out.retain(|c| c != config);
        out
    }

    /// Every configuration of the space, the last field varying fastest
    /// (what a tuner renders up front when the space is small).
    pub fn all(&self) -> Vec<Config> {
        let mut configs = vec![Vec::new()];
        for field in &self.fields {
            configs = configs
                .into_iter()
                .flat_map(|c| {
                    (0..field.values.len()).map(move |i| {
                        let mut c = c.clone();
                        c.push(i);
                        c
                    })
                })
                .collect();
        }
        configs.into_iter().map(Config).collect()
    }

    /// `threads=256 stages=3` for reports.
    pub fn describe(&self, config: &Config) -> String {
        self.fields
            .iter()
            .zip(self.values(config))
            .map(|(f, v)| format!("{}={v}", f.name))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} in {:?}", field.name, field.values)?;
        }
        Ok(())
    }
}
