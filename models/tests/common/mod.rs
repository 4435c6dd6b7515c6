//! Text edits of model.toml sources shared by the config tests.

#![allow(dead_code)]

/// The 1-based number of the first line of `source` starting with `start`.
pub fn line_starting(source: &str, start: &str) -> usize {
    source
        .lines()
        .position(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with `{start}`"))
        + 1
}

/// `source` with its line `key = ...` replaced by `key = value`.
pub fn with_line(source: &str, key: &str, value: &str) -> String {
    let line = line_starting(source, &format!("{key} = "));
    source
        .lines()
        .enumerate()
        .map(|(index, text)| {
            if index + 1 == line {
                format!("{key} = {value}\n")
            } else {
                format!("{text}\n")
            }
        })
        .collect()
}
