//! Writes the conformance fixtures: `et-fixtures OUT_DIR` creates `OUT_DIR/valid/*.ets`,
//! `OUT_DIR/invalid/*.ets` and `OUT_DIR/conformance.json`. The output is the same bytes on
//! every run and machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Generate the .ets conformance fixtures and their manifest.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Output folder (created if missing; files are overwritten).
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match ets_testkit::conformance::generate(&args.out) {
        Ok(entries) => {
            let invalid = entries.iter().filter(|e| e.rule.is_some()).count();
            println!(
                "wrote {} valid and {invalid} invalid fixtures and conformance.json to {}",
                entries.len() - invalid,
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("et-fixtures: {}: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
