//! The `ferry` binary: parse flags, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = ferry::cli::Args::parse_args();
    ferry::cli::init_logging(&args.global);
    match ferry::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            if let Some(u) = e.downcast_ref::<ferry::cli::UsageError>() {
                eprintln!("error: {u}");
                return ExitCode::from(2);
            }
            // Library errors already say their cause; print each cause only once.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !line.contains(&c) {
                    line = format!("{line}: {c}");
                }
            }
            eprintln!("error: {line}");
            ExitCode::from(1)
        }
    }
}
