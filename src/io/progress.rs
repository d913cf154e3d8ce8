//! Progress bars on stderr (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    styled(len, what, "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
}

/// A bar that also shows the rate, e.g. examples/s.
pub fn rate_bar(len: usize, what: &str, unit: &str) -> ProgressBar {
    styled(
        len,
        what,
        &format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}} {{elapsed_precise}} eta {{eta}}"),
    )
}

fn styled(len: usize, what: &str, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(what.to_string());
    bar
}
