//! Plain-text tables for human output.

pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Cells may hold anything a guest or a client wrote: each is made one
    /// line safe for a terminal ([`super::term::line`]).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| super::term::line(&c).into_owned())
                .collect(),
        );
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            println!("{}", s.trim_end());
        };
        line(self.headers.clone());
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
}

/// Shortens text to one line of at most `max` characters.
pub fn clip(text: &str, max: usize) -> String {
    let one = text.lines().next().unwrap_or("");
    if one.chars().count() <= max && !text.contains('\n') {
        return one.to_string();
    }
    let mut s: String = one.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}
