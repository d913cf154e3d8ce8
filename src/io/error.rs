//! One error type for every user-facing failure: each becomes one line on stderr and exit code 2.

use std::fmt;

#[derive(Debug)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Builds an [`Error`] from a format string, like `format!`.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::io::error::Error(format!($($arg)*)) };
}

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::err!($($arg)*)) };
}

/// One line on stdout, as `println!`, but a reader that has gone (`neuroal inspect DIR | head`)
/// is [`stdout_closed`]'s error instead of `println!`'s panic: it unwinds the command as any
/// error does (removing what it staged) and `main` ends without a word.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::io::error::write_line(format_args!($($arg)*)) };
}

const STDOUT_CLOSED: &str = "stdout was closed by its reader";

/// [`outln!`]'s writer.
pub fn write_line(args: fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error(STDOUT_CLOSED.into())),
        Err(e) => Err(Error(format!("cannot write to stdout: {}", io_words(&e)))),
    }
}

/// A result as JSON on stdout through [`write_line`]: on one line, or indented where `pretty`.
pub fn write_json<T: serde::Serialize>(value: &T, pretty: bool) -> Result<()> {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    write_line(format_args!("{}", text.map_err(|e| Error(format!("cannot encode the result: {e}")))?))
}

/// Whether the error is [`outln!`]'s for a reader that has gone.
pub fn stdout_closed(e: &Error) -> bool {
    e.0 == STDOUT_CLOSED
}

/// Adds the context of an operation (usually a path) to foreign errors.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {}", what(), without_os_codes(&e.to_string()))))
    }
}

/// An I/O error in words, without Rust's debug structure or the "(os error N)" suffix.
pub fn io_words(e: &std::io::Error) -> String {
    without_os_codes(&e.to_string())
}

/// Text without the " (os error N)" that Rust appends to a system error, wherever a library
/// put one into its message: the words say it, the number is noise to a user.
pub fn without_os_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" (os error ") {
        let tail = &rest[i + " (os error ".len()..];
        let digits = tail.bytes().take_while(|b| b.is_ascii_digit() || *b == b'-').count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Checks an input file named on the command line: missing, a folder, or not a regular file (a
/// pipe or a device, which the run could not read twice: once for its tokens, once for the
/// report's SHA-256) each get their own line, where "not found" had said all three.
pub fn check_input_file(path: &std::path::Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(Error(format!("{}: the {what} is a folder; name a file", path.display()))),
        Ok(_) => Err(Error(format!(
            "{}: the {what} is not a regular file (a pipe or a device); save it to a file first",
            path.display()
        ))),
        Err(e) => Err(Error(format!("{}: {what} {}", path.display(), unreadable(&e)))),
    }
}

/// Why a path named on the command line cannot be opened, in words: missing, a loop of
/// symbolic links, or what the system says.
fn unreadable(e: &std::io::Error) -> String {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return "is a loop of symbolic links".into();
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "cannot be read: permission denied".into(),
        _ => format!("cannot be read: {}", io_words(e)),
    }
}

/// Checks a model folder named on the command line: missing, or a file.
pub fn check_model_folder(path: &std::path::Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error(format!(
            "{}: the model folder is a file; name the folder that holds config.json",
            path.display()
        ))),
        Err(e) => Err(Error(format!("{}: model folder {}", path.display(), unreadable(&e)))),
    }
}

/// A multi-line message from a library folded into one line.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// A failed device readback in words. burn's runtime reports the first failure deep in a chain
/// of skipped kernels; an allocation the GPU cannot make is said plainly, with what helps.
pub fn device_words(text: &str) -> String {
    let size_after = |marker: &str| -> Option<u64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    if let Some(n) = size_after("can't allocate buffer of size:") {
        return format!(
            "the GPU cannot hold a single buffer of {}, more than its limit per buffer; lower --seqlen (or bench's --batch), use --dtype f16, or use --device cpu",
            crate::io::error::human(n as u128)
        );
    }
    if let Some(n) = size_after("out of device memory allocating") {
        return format!(
            "the GPU ran out of memory allocating {}; lower --seqlen or --nsamples (or bench's --batch), use --dtype f16, or use --device cpu",
            crate::io::error::human(n as u128)
        );
    }
    one_line(text)
}

pub fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_error_numbers_are_left_out() {
        assert_eq!(
            super::without_os_codes("a: No such file or directory (os error 2); b: Is a directory (os error 21)"),
            "a: No such file or directory; b: Is a directory"
        );
        assert_eq!(super::without_os_codes("kept (os error x) as is"), "kept (os error x) as is");
        let e = std::io::Error::from_raw_os_error(2);
        assert!(!super::io_words(&e).contains("os error"), "{}", super::io_words(&e));
    }

    #[test]
    fn allocation_failures_are_said_plainly() {
        let deep = "An error happened during execution\nCaused by:\n  skipped `MatmulEntry`\n  can't allocate buffer of size: 262144000\nNo backtrace available";
        assert_eq!(
            super::device_words(deep),
            "the GPU cannot hold a single buffer of 250.0 MiB, more than its limit per buffer; lower --seqlen (or bench's --batch), use --dtype f16, or use --device cpu"
        );
        let oom = "Caused by: out of device memory allocating 3221225472 bytes\n";
        assert!(
            super::device_words(oom).starts_with("the GPU ran out of memory allocating 3.0 GiB;"),
            "{}",
            super::device_words(oom)
        );
        assert_eq!(super::device_words("lost\n  device"), "lost; device");
    }
}
