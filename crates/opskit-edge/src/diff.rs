//! A unified diff of two texts (what `diff -u` prints), for `apply --dry-run`: the operator
//! sees exactly which lines of the live config the deploy changes.

use std::fmt::Write as _;

/// Lines of context around each change, as `diff -u`.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The line-by-line edit script from `old` to `new` (longest common subsequence).
fn edits<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<(Op, &'a str)> {
    let (n, m) = (old.len(), new.len());
    // lcs[i][j]: length of the LCS of old[i..] and new[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if old[i] == new[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push((Op::Same, old[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            // Removals first, as `diff -u` prints them.
            out.push((Op::Removed, old[i]));
            i += 1;
        } else {
            out.push((Op::Added, new[j]));
            j += 1;
        }
    }
    out
}

/// `diff -u` of `old` and `new` with the given file labels; empty when the texts are equal.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edits(&a, &b);
    if ops.iter().all(|(op, _)| *op == Op::Same) {
        return String::new();
    }
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Line numbers (0-based) in old and new at each position of the script.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut oi, mut ni) = (0usize, 0usize);
    for (op, _) in &ops {
        pos.push((oi, ni));
        match op {
            Op::Same => {
                oi += 1;
                ni += 1;
            }
            Op::Removed => oi += 1,
            Op::Added => ni += 1,
        }
    }
    pos.push((oi, ni));
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != Op::Same).collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        // Merge changes whose contexts touch.
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let (o0, n0) = pos[start];
        let (o1, n1) = pos[end];
        let range = |first: usize, len: usize| match len {
            0 => format!("{first},0"),
            1 => format!("{}", first + 1),
            _ => format!("{},{len}", first + 1),
        };
        let _ = writeln!(out, "@@ -{} +{} @@", range(o0, o1 - o0), range(n0, n1 - n0));
        for (op, line) in &ops[start..end] {
            let sign = match op {
                Op::Same => ' ',
                Op::Removed => '-',
                Op::Added => '+',
            };
            let _ = writeln!(out, "{sign}{line}");
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn a_changed_line_shows_with_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified(old, new, "live", "new"),
            "--- live\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks_and_an_empty_old_file_is_all_added() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "two\n").replace("19\n", "nineteen\n");
        let d = unified(&old, &new, "a", "b");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-19\n+nineteen\n"), "{d}");
        assert_eq!(
            unified("", "x\ny\n", "a", "b"),
            "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+x\n+y\n"
        );
    }
}
