//! The C ABI: compiles `tests/c/capi_test.c` against `include/ets.h` and `libets.so` with the
//! system C compiler, runs it on committed fixtures, and compares everything it read (tensor
//! listing, every tensor's values, embeddings of token ids and of texts) bit for bit with the
//! Rust API.

use std::path::{Path, PathBuf};
use std::process::Command;

use ets::format::EtsFile;
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::embed::{EmbedSettings, Embedder, Overrides};
use ets::runtime::TokenBatch;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder holding `libets.so` built with this test (`target/<profile>/deps` or its parent).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps folder").to_path_buf();
    for dir in [
        deps.clone(),
        deps.parent().expect("profile folder").to_path_buf(),
    ] {
        if dir.join("libets.so").is_file() {
            return dir;
        }
    }
    panic!("libets.so not found next to {}", exe.display());
}

fn compile() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi_test");
    let lib = library_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(root().join("include"))
        .arg(root().join("tests/c/capi_test.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lets", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(status.success(), "compiling tests/c/capi_test.c failed");
    out
}

fn fnv1a(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn bits(tag: &str, values: &[f32]) -> String {
    let mut line = tag.to_string();
    for v in values {
        line.push_str(&format!(" {:08x}", v.to_bits()));
    }
    line
}

/// What the C program must print for `path`, computed with the Rust API.
fn expected(path: &Path) -> String {
    let file = EtsFile::open(path).expect("open fixture");
    let mut lines = Vec::new();
    for t in file.tensors() {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        let dense = t.to_dense_f32();
        lines.push(format!(
            "tensor {} {} {} {} {} {} {:016x}",
            t.name,
            t.shape.len(),
            shape.join(" "),
            t.dtype.name(),
            t.encoding.short_name(),
            t.numel(),
            fnv1a(&dense)
        ));
    }
    let settings = EmbedSettings::resolve(&file, &Overrides::default()).expect("settings");
    let tokenizer =
        TextTokenizer::from_file_with_max_len(&file, settings.max_length).expect("tokenizer");
    let encoder = CpuEncoder::new(&file).expect("encoder");
    let embedder = Embedder::new(Box::new(encoder), tokenizer, settings);
    let ids = TokenBatch::from_ids(vec![vec![2, 7, 11, 13, 3], vec![2, 5, 3]]);
    lines.push(bits(
        "ids",
        &embedder.embed_tokens(&ids, 32).expect("embed ids"),
    ));
    let texts = embedder
        .embed(&["hello world", "a second sentence"], 32)
        .expect("embed texts");
    lines.push(bits("texts", &texts));
    let cls = Overrides {
        pooling: Some(ets::runtime::Pooling::Cls),
        normalize: Some(false),
        max_length: Some(4),
    };
    let settings = EmbedSettings::resolve(&file, &cls).expect("settings");
    let tokenizer =
        TextTokenizer::from_file_with_max_len(&file, settings.max_length).expect("tokenizer");
    let encoder = CpuEncoder::new(&file).expect("encoder");
    let embedder = Embedder::new(Box::new(encoder), tokenizer, settings);
    let texts = embedder
        .embed(&["hello world", "a second sentence"], 32)
        .expect("embed texts with options");
    let cls_line = bits("texts-cls", &texts);
    assert_ne!(
        cls_line[10..],
        lines.last().expect("texts line")[6..],
        "the options must change the embeddings"
    );
    lines.push(cls_line);
    lines.push("ok".into());
    lines.join("\n") + "\n"
}

#[test]
fn c_program_reads_the_same_tensors_and_embeddings_as_rust() {
    let program = compile();
    for name in [
        "tiny-bert-tile16x16-elements-bf16.ets",
        "tiny-bert-cols-f16.ets",
        "tiny-bert-dense-f32.ets",
    ] {
        let path = root().join("fixtures/valid").join(name);
        let run = Command::new(&program)
            .arg(&path)
            .output()
            .expect("run capi_test");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{name}: capi_test failed\n{stdout}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let want = expected(&path);
        assert_eq!(
            stdout, want,
            "{name}: the C ABI disagrees with the Rust API"
        );
        assert!(
            want.lines().count() > 10,
            "{name}: too few lines to compare"
        );
    }
}
