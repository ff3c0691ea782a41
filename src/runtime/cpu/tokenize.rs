//! Text to token ids with the tokenizer embedded in a `.ets` file.
//!
//! A `tokenizer.json` section is loaded as is (its own padding and truncation settings are
//! switched off: the runtime packs sequences and truncates to the model's position table). A
//! `vocab.txt` section becomes the standard BERT WordPiece pipeline: BERT normalizer (clean text,
//! Chinese characters split, lowercase), BERT pre-tokenizer, WordPiece with `##` continuations and
//! the `[CLS] A [SEP]` template.

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use crate::format::{names, EtsFile};
use crate::runtime::{RuntimeError, TokenBatch, TokenSequence};

/// A sequence that was cut to fit the model's position table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Index of the input text.
    pub index: usize,
    /// Tokens before truncation (special tokens included).
    pub original_len: usize,
    /// Tokens kept.
    pub kept_len: usize,
}

/// The result of tokenizing a list of texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// One sequence per text, special tokens included.
    pub batch: TokenBatch,
    /// The texts that were truncated (the caller decides how to warn).
    pub truncated: Vec<Truncation>,
}

/// The tokenizer of a model, built from the file's `tokenizer` section.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    sep_id: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer embedded in `file`; [`RuntimeError::NoTokenizer`] when there is none.
    pub fn from_file(file: &EtsFile) -> Result<TextTokenizer, RuntimeError> {
        let section = file
            .section(names::TOKENIZER_SECTION)
            .ok_or(RuntimeError::NoTokenizer)?;
        let format = section.entry.format.clone().unwrap_or_default();
        let max_len = file.model().max_position_embeddings as usize;
        TextTokenizer::from_bytes(&format, section.bytes, max_len)
    }

    /// Builds the tokenizer embedded in `file`, truncating sequences to `max_len` tokens.
    pub fn from_file_with_max_len(
        file: &EtsFile,
        max_len: usize,
    ) -> Result<TextTokenizer, RuntimeError> {
        let section = file
            .section(names::TOKENIZER_SECTION)
            .ok_or(RuntimeError::NoTokenizer)?;
        let format = section.entry.format.clone().unwrap_or_default();
        TextTokenizer::from_bytes(&format, section.bytes, max_len)
    }

    /// Reads a `tokenizer.json` (or, for a `.txt` name, a `vocab.txt`) file of at most
    /// [`crate::files::MAX_TOKENIZER_BYTES`], truncating sequences to `max_len` tokens.
    pub fn from_path(
        path: &std::path::Path,
        max_len: usize,
    ) -> Result<TextTokenizer, RuntimeError> {
        let bytes = crate::files::read_capped(path, crate::files::MAX_TOKENIZER_BYTES)
            .map_err(|e| RuntimeError::Tokenizer(format!("{}: {e}", path.display())))?;
        let format = crate::ingest::tokenizer_format(path);
        TextTokenizer::from_bytes(format, &bytes, max_len)
            .map_err(|e| RuntimeError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Builds a tokenizer from a `tokenizer.json` or `vocab.txt` blob; sequences are truncated to
    /// `max_len` tokens.
    pub fn from_bytes(
        format: &str,
        bytes: &[u8],
        max_len: usize,
    ) -> Result<TextTokenizer, RuntimeError> {
        let mut inner = match format {
            "tokenizer.json" => Tokenizer::from_bytes(bytes)
                .map_err(|e| RuntimeError::Tokenizer(format!("tokenizer.json: {e}")))?,
            "vocab.txt" => wordpiece_from_vocab(bytes)?,
            other => {
                return Err(RuntimeError::Tokenizer(format!(
                    "unknown tokenizer format `{other}` (expected tokenizer.json or vocab.txt)"
                )))
            }
        };
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        let sep_id = inner.token_to_id("[SEP]");
        Ok(TextTokenizer {
            inner,
            max_len: max_len.max(1),
            sep_id,
        })
    }

    /// Longest sequence kept, in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes texts (special tokens added), truncating each to [`TextTokenizer::max_len`]
    /// tokens while keeping a final `[SEP]`. Large lists are split over the machine's cores;
    /// the result is the same as one text at a time.
    pub fn encode(&self, texts: &[&str]) -> Result<Tokenized, RuntimeError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.encode_on(texts, threads)
    }

    /// [`TextTokenizer::encode`] on at most `threads` threads (each takes at least
    /// [`MIN_TEXTS_PER_THREAD`] texts).
    pub fn encode_on(&self, texts: &[&str], threads: usize) -> Result<Tokenized, RuntimeError> {
        let threads = threads.clamp(1, texts.len().div_ceil(MIN_TEXTS_PER_THREAD).max(1));
        if threads == 1 {
            return self.encode_range(texts, 0);
        }
        let per = texts.len().div_ceil(threads);
        let parts: Vec<Result<Tokenized, RuntimeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = texts
                .chunks(per)
                .enumerate()
                .map(|(i, chunk)| scope.spawn(move || self.encode_range(chunk, i * per)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(RuntimeError::Tokenizer(
                            "a tokenizer thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut out = Tokenized {
            batch: TokenBatch {
                sequences: Vec::with_capacity(texts.len()),
            },
            truncated: Vec::new(),
        };
        for part in parts {
            let part = part?;
            out.batch.sequences.extend(part.batch.sequences);
            out.truncated.extend(part.truncated);
        }
        Ok(out)
    }

    /// Tokenizes `texts`, the first of which is text number `first` of the caller's list.
    fn encode_range(&self, texts: &[&str], first: usize) -> Result<Tokenized, RuntimeError> {
        let mut sequences = Vec::with_capacity(texts.len());
        let mut truncated = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let index = first + i;
            let enc = self
                .inner
                .encode(*text, true)
                .map_err(|e| RuntimeError::Tokenizer(format!("text {index}: {e}")))?;
            let mut ids = enc.get_ids().to_vec();
            let mut type_ids = enc.get_type_ids().to_vec();
            let original_len = ids.len();
            if ids.len() > self.max_len {
                let ends_with_sep = self.sep_id.is_some() && ids.last().copied() == self.sep_id;
                ids.truncate(self.max_len);
                type_ids.truncate(self.max_len);
                if let (true, Some(sep), Some(last)) = (ends_with_sep, self.sep_id, ids.last_mut())
                {
                    *last = sep;
                }
                truncated.push(Truncation {
                    index,
                    original_len,
                    kept_len: ids.len(),
                });
            }
            sequences.push(TokenSequence { ids, type_ids });
        }
        Ok(Tokenized {
            batch: TokenBatch { sequences },
            truncated,
        })
    }
}

/// Fewest texts a tokenizer thread is started for (below that a thread costs more than it saves).
pub const MIN_TEXTS_PER_THREAD: usize = 64;

/// The BERT WordPiece pipeline over a `vocab.txt` (one token per line, id = line number).
fn wordpiece_from_vocab(bytes: &[u8]) -> Result<Tokenizer, RuntimeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RuntimeError::Tokenizer(format!("vocab.txt is not UTF-8: {e}")))?;
    let mut vocab = Map::new();
    for (id, line) in text.lines().enumerate() {
        let token = line.trim_end_matches('\r');
        if token.is_empty() {
            continue;
        }
        // First occurrence wins, as in the reference BERT loader.
        if !vocab.contains_key(token) {
            vocab.insert(token.to_string(), json!(id));
        }
    }
    let id_of = |t: &str| vocab.get(t).and_then(Value::as_u64);
    let (Some(cls), Some(sep)) = (id_of("[CLS]"), id_of("[SEP]")) else {
        return Err(RuntimeError::Tokenizer(
            "vocab.txt lacks [CLS] or [SEP]".to_string(),
        ));
    };
    if id_of("[UNK]").is_none() {
        return Err(RuntimeError::Tokenizer("vocab.txt lacks [UNK]".to_string()));
    }
    let added: Vec<Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter_map(|t| {
            id_of(t).map(|id| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
        })
        .collect();
    // Described as a tokenizer.json document so the library's own loader assembles the pipeline.
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", sep], "cls": ["[CLS]", cls]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": Value::Object(vocab)},
    });
    let bytes = serde_json::to_vec(&doc).map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
    Tokenizer::from_bytes(bytes).map_err(|e| RuntimeError::Tokenizer(format!("vocab.txt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##s\n,\n";

    #[test]
    fn vocab_txt_pipeline() {
        let t = TextTokenizer::from_bytes("vocab.txt", VOCAB.as_bytes(), 512).unwrap();
        let out = t.encode(&["Hello WORLDs, zebra"]).unwrap();
        // [CLS] hello world ##s , [UNK] [SEP]
        assert_eq!(out.batch.sequences[0].ids, vec![2, 5, 6, 7, 8, 1, 3]);
        assert!(out.truncated.is_empty());
    }

    #[test]
    fn truncation_keeps_sep() {
        let t = TextTokenizer::from_bytes("vocab.txt", VOCAB.as_bytes(), 4).unwrap();
        let out = t.encode(&["hello world hello world", "hello"]).unwrap();
        assert_eq!(out.batch.sequences[0].ids, vec![2, 5, 6, 3]);
        assert_eq!(out.batch.sequences[1].ids, vec![2, 5, 3]);
        assert_eq!(
            out.truncated,
            vec![Truncation {
                index: 0,
                original_len: 6,
                kept_len: 4
            }]
        );
    }

    #[test]
    fn threads_give_the_same_sequences_and_truncation_indices_in_order() {
        let t = TextTokenizer::from_bytes("vocab.txt", VOCAB.as_bytes(), 5).unwrap();
        let words = ["hello", "world", "worlds", ",", "zebra"];
        let texts: Vec<String> = (0..1000)
            .map(|i| {
                (0..1 + i % 7)
                    .map(|j| words[(i * 3 + j) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let one = t.encode_on(&refs, 1).unwrap();
        assert!(
            one.truncated.len() > 100,
            "the test must truncate some texts"
        );
        for threads in [2, 3, 8, 64] {
            let many = t.encode_on(&refs, threads).unwrap();
            assert_eq!(many, one, "{threads} threads");
        }
        assert_eq!(t.encode(&refs).unwrap(), one);
    }

    #[test]
    fn bad_format_is_an_error() {
        assert!(matches!(
            TextTokenizer::from_bytes("spm", b"", 8),
            Err(RuntimeError::Tokenizer(_))
        ));
    }
}
