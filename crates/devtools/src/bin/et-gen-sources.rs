//! Writes the synthetic source-model fixtures (a tiny BERT as safetensors + config.json + vocab.txt,
//! and as ONNX in every supported graph style) into a folder, deterministically.
//!
//! `cargo run --release -p ets-dev --bin et-gen-sources -- fixtures/sources`

use std::path::PathBuf;
use std::process::ExitCode;

use ets_testkit::sources::{write_onnx, write_safetensors, OnnxStyle};

fn style_name(style: OnnxStyle) -> &'static str {
    match style {
        OnnxStyle::Inline => "inline",
        OnnxStyle::External => "external",
        OnnxStyle::DecomposedLn => "decomposed-ln",
        OnnxStyle::GemmTanh => "gemm-tanh",
    }
}

fn main() -> ExitCode {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fixtures/sources".into()),
    );
    let run = || -> std::io::Result<()> {
        let st = dir.join("tiny-safetensors");
        std::fs::create_dir_all(&st)?;
        write_safetensors(&st)?;
        for style in OnnxStyle::ALL {
            let sub = dir.join(format!("tiny-onnx-{}", style_name(style)));
            std::fs::create_dir_all(&sub)?;
            write_onnx(&sub.join("model.onnx"), style)?;
            std::fs::write(sub.join("vocab.txt"), ets_testkit::sources::vocab_txt(100))?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => {
            println!("wrote source fixtures to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("et-gen-sources: {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}
