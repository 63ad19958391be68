//! Results on stdout. A reader that goes away early (`ferry ls B | head -1`)
//! ends the process quietly with exit 0, as ripgrep does, instead of the
//! panic `println!` gives on a broken pipe.

use std::io::Write;

/// Writes one line of results to stdout; exits 0 at once if stdout's reader is gone.
pub fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let r = writeln!(out, "{text}").and_then(|()| out.flush());
    if let Err(e) = r {
        quit_on(e);
    }
}

/// Exits 0 on a broken pipe (the reader has what it wanted); any other stdout error exits 1 with one line.
fn quit_on(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

/// `println!` for results: same formatting, broken pipes end the process quietly.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes raw bytes (completions, a man page) to stdout, with the same broken-pipe rule.
pub fn bytes(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(b).and_then(|()| out.flush()) {
        quit_on(e);
    }
}
