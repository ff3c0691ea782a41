//! Checks a `.ets` file completely: every structural rule, then every section's SHA-256.
//!
//! Exit status: 0 when the file is valid (`ok: N sections, M bytes` on stdout), 1 when it is not
//! (`FILE: CODE: MESSAGE` on stderr, CODE being the rule's stable error code), 2 on a usage error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ets::format::{EtsFile, FormatError};

/// Verify the structure and checksums of an .ets file.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Print one JSON object on stdout instead of text (exit status unchanged).
    #[arg(long)]
    json: bool,
    /// Check only the structure (what opening checks), not the section checksums.
    #[arg(long)]
    no_checksums: bool,
    /// The file to check.
    file: PathBuf,
}

fn check(args: &Args) -> Result<(usize, u64), FormatError> {
    let f = EtsFile::open(&args.file)?;
    if !args.no_checksums {
        f.verify_checksums()?;
    }
    Ok((f.header().sections.len(), f.bytes().len() as u64))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file = args.file.display().to_string();
    let result = check(&args);
    if args.json {
        let v = match &result {
            Ok((sections, bytes)) => serde_json::json!({
                "file": file, "valid": true, "sections": sections, "bytes": bytes,
                "checksums_verified": !args.no_checksums,
            }),
            Err(e) => serde_json::json!({
                "file": file, "valid": false, "code": e.code(), "message": e.to_string(),
            }),
        };
        let _ = writeln!(std::io::stdout(), "{v}");
    }
    match result {
        Ok((sections, bytes)) => {
            if !args.json {
                let what = if args.no_checksums {
                    " (structure only)"
                } else {
                    ""
                };
                let _ = writeln!(
                    std::io::stdout(),
                    "ok: {sections} sections, {bytes} bytes{what}"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if !args.json {
                // One line, whatever the message holds.
                let message = e.to_string().replace('\n', " ");
                let _ = writeln!(std::io::stderr(), "{file}: {}: {message}", e.code());
            }
            ExitCode::from(1)
        }
    }
}
