//! The C ABI (`include/ets.h`, built into `libets.so`): open a file, list and read its tensors,
//! embed token ids.
//!
//! Rules every function keeps:
//! - No panic crosses the boundary: each body runs under `catch_unwind`, and a panic becomes an
//!   error like any other.
//! - A null pointer argument is an error, never a crash.
//! - A failure returns `NULL` (handles, strings) or `-1` (status codes) and records a message that
//!   `ets_last_error` returns until the next failure on the same thread.
//! - Buffers belong to the caller and come with their length in elements; one too small for the
//!   result is an error and is left unwritten.
//! - The symbols are unmangled except in this crate's own unit-test build, which links the
//!   library a second time through the test kit and would otherwise define each symbol twice.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::EtsFile;
use crate::runtime::embed::Overrides;
use crate::runtime::shared::{Device, SharedEmbedder};
use crate::runtime::{TokenBatch, TokenSequence};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Batch size used when the caller passes 0.
const DEFAULT_BATCH: usize = 32;

fn set_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs `body`, turning an error or a panic into `fail` with the message recorded.
fn guard<T>(fail: T, body: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(message)) => {
            set_error(&message);
            fail
        }
        Err(_) => {
            set_error("internal error: a panic was caught at the C boundary");
            fail
        }
    }
}

fn non_null<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, String> {
    // SAFETY: the caller passes either NULL or a pointer this library returned (or a valid
    // object of the documented type), as the header states.
    unsafe { ptr.as_ref() }.ok_or_else(|| format!("{what} is NULL"))
}

fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, String> {
    if ptr.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-null, and the header requires a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| format!("{what} is not valid UTF-8"))
}

/// A caller's buffer of `len` elements as a slice; NULL is allowed only when `len` is 0.
fn buffer<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-null, and the header requires `len` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

fn buffer_mut<'a, T>(ptr: *mut T, len: usize, what: &str) -> Result<&'a mut [T], String> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-null, and the header requires `len` writable elements not aliased elsewhere.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// The caller's output buffer for `count` embeddings of `hidden` floats, and the floats they
/// take; one too small is an error and stays unwritten.
fn embedding_output<'a>(
    out: *mut f32,
    out_len: usize,
    count: usize,
    hidden: usize,
) -> Result<(&'a mut [f32], usize), String> {
    let need = count
        .checked_mul(hidden)
        .ok_or("the output size overflows")?;
    if out_len < need {
        return Err(format!(
            "buffer of {out_len} floats is too small for {count} embeddings of {hidden} ({need})"
        ));
    }
    Ok((buffer_mut(out, out_len, "out")?, need))
}

/// An open `.ets` file (`ets_file` in C).
pub struct EtsFileHandle {
    file: Arc<EtsFile>,
    names: Vec<CString>,
    header_json: CString,
}

/// An encoder (`ets_encoder` in C).
pub struct EtsEncoderHandle {
    embedder: SharedEmbedder,
}

impl EtsFileHandle {
    fn tensor(&self, index: usize) -> Result<crate::format::TensorView<'_>, String> {
        let count = self.names.len();
        self.file
            .tensors()
            .nth(index)
            .ok_or_else(|| format!("tensor index {index} is out of range ({count} tensors)"))
    }
}

fn open_file(path: &str) -> Result<Arc<EtsFile>, String> {
    EtsFile::open(PathBuf::from(path))
        .map(Arc::new)
        .map_err(|e| format!("{path}: {e}"))
}

fn file_handle(file: Arc<EtsFile>) -> Result<EtsFileHandle, String> {
    let names = file
        .tensors()
        .map(|t| CString::new(t.name).map_err(|_| format!("tensor name {:?} holds NUL", t.name)))
        .collect::<Result<Vec<_>, String>>()?;
    let json = serde_json::to_string(file.header()).map_err(|e| e.to_string())?;
    let header_json = CString::new(json).map_err(|_| "the header holds NUL".to_string())?;
    Ok(EtsFileHandle {
        file,
        names,
        header_json,
    })
}

/// Opens and validates a file. NULL on failure.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_open(path: *const c_char) -> *mut EtsFileHandle {
    guard(std::ptr::null_mut(), || {
        let path = c_str(path, "path")?;
        let handle = file_handle(open_file(path)?)?;
        Ok(Box::into_raw(Box::new(handle)))
    })
}

/// Closes a file; NULL is ignored. Encoders opened from it stay usable.
///
/// # Safety
/// `file` is NULL or a handle from `ets_open` not closed before.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_close(file: *mut EtsFileHandle) {
    if !file.is_null() {
        // SAFETY: a handle from `ets_open`, closed once (the caller's contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(file) })));
    }
}

/// The message of the last failure on this thread ("" when none).
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn ets_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version, e.g. "0.1.0".
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn ets_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Number of tensors (0 with an error recorded when `file` is NULL).
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_count(file: *const EtsFileHandle) -> usize {
    guard(0, || Ok(non_null(file, "file")?.names.len()))
}

/// The header as JSON (model configuration, recipe, provenance, embedding settings, sections),
/// valid until the file is closed.
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_header_json(file: *const EtsFileHandle) -> *const c_char {
    guard(std::ptr::null(), || {
        Ok(non_null(file, "file")?.header_json.as_ptr())
    })
}

/// The name of tensor `index`, valid until the file is closed.
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_name(
    file: *const EtsFileHandle,
    index: usize,
) -> *const c_char {
    guard(std::ptr::null(), || {
        let f = non_null(file, "file")?;
        f.names.get(index).map(|n| n.as_ptr()).ok_or_else(|| {
            format!(
                "tensor index {index} is out of range ({} tensors)",
                f.names.len()
            )
        })
    })
}

/// Writes the index of the tensor called `name` to `*index`. 0, or -1 when there is none.
///
/// # Safety
/// `file` is NULL or an open handle; `name` NULL or NUL-terminated; `index` NULL or writable.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_find(
    file: *const EtsFileHandle,
    name: *const c_char,
    index: *mut usize,
) -> c_int {
    guard(-1, || {
        let f = non_null(file, "file")?;
        let name = c_str(name, "name")?;
        let out = buffer_mut(index, 1, "index")?;
        let found = f.names.iter().position(|n| n.as_bytes() == name.as_bytes());
        out[0] = found.ok_or_else(|| format!("no tensor named {name:?}"))?;
        Ok(0)
    })
}

/// Writes the rank to `*rank` and the logical dense shape to `shape[0..rank]`; `capacity` is the
/// length of `shape` (`ETS_MAX_RANK` always suffices). 0, or -1.
///
/// # Safety
/// `file` is NULL or an open handle; `shape` holds `capacity` writable elements; `rank` writable.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_shape(
    file: *const EtsFileHandle,
    index: usize,
    shape: *mut u64,
    capacity: usize,
    rank: *mut usize,
) -> c_int {
    guard(-1, || {
        let t = non_null(file, "file")?.tensor(index)?;
        let rank_out = buffer_mut(rank, 1, "rank")?;
        if capacity < t.shape.len() {
            return Err(format!(
                "shape buffer of {capacity} elements is too small for rank {}",
                t.shape.len()
            ));
        }
        buffer_mut(shape, capacity, "shape")?[..t.shape.len()].copy_from_slice(t.shape);
        rank_out[0] = t.shape.len();
        Ok(0)
    })
}

/// Writes the number of logical elements (the product of the shape) to `*numel`. 0, or -1.
///
/// # Safety
/// `file` is NULL or an open handle; `numel` NULL or writable.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_numel(
    file: *const EtsFileHandle,
    index: usize,
    numel: *mut usize,
) -> c_int {
    guard(-1, || {
        let t = non_null(file, "file")?.tensor(index)?;
        buffer_mut(numel, 1, "numel")?[0] = t.numel();
        Ok(0)
    })
}

/// The stored element type: "f32", "f16" or "bf16" (a static string).
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_dtype(
    file: *const EtsFileHandle,
    index: usize,
) -> *const c_char {
    guard(std::ptr::null(), || {
        let t = non_null(file, "file")?.tensor(index)?;
        Ok(static_name(t.dtype.name()))
    })
}

/// The encoding: "dense", "tile", "tile+elements", "rows" or "cols" (a static string).
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_encoding(
    file: *const EtsFileHandle,
    index: usize,
) -> *const c_char {
    guard(std::ptr::null(), || {
        let t = non_null(file, "file")?.tensor(index)?;
        Ok(static_name(t.encoding.short_name()))
    })
}

/// A NUL-terminated copy of a name from a fixed set, kept for the life of the process.
fn static_name(name: &'static str) -> *const c_char {
    const NAMES: [&CStr; 8] = [
        c"f32",
        c"f16",
        c"bf16",
        c"dense",
        c"tile",
        c"tile+elements",
        c"rows",
        c"cols",
    ];
    NAMES
        .iter()
        .find(|n| n.to_bytes() == name.as_bytes())
        .map_or(c"unknown".as_ptr(), |n| n.as_ptr())
}

/// Writes tensor `index` as dense row-major f32 into `out`, which holds `len` elements (at least
/// its number of elements; see `ets_tensor_numel`). 0, or -1.
///
/// # Safety
/// `file` is NULL or an open handle; `out` holds `len` writable floats.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_tensor_read_f32(
    file: *const EtsFileHandle,
    index: usize,
    out: *mut f32,
    len: usize,
) -> c_int {
    guard(-1, || {
        let t = non_null(file, "file")?.tensor(index)?;
        let numel = t.numel();
        if len < numel {
            return Err(format!(
                "buffer of {len} floats is too small for tensor `{}` of {numel} elements",
                t.name
            ));
        }
        let out = buffer_mut(out, len, "out")?;
        out[..numel].copy_from_slice(&t.to_dense_f32());
        Ok(0)
    })
}

/// Verifies every section's SHA-256. 0, or -1 naming the first mismatch.
///
/// # Safety
/// `file` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_verify(file: *const EtsFileHandle) -> c_int {
    guard(-1, || {
        let f = non_null(file, "file")?;
        f.file.verify_checksums().map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Embedding settings that replace the file's (`ets_embed_options` in C): `pooling` "mean" or
/// "cls" (NULL keeps the file's), `normalize` 1 or 0 (-1 keeps the file's), `max_length` (0 keeps
/// the file's; capped by the position table).
#[repr(C)]
pub struct EtsEmbedOptions {
    /// "mean", "cls", or NULL.
    pub pooling: *const c_char,
    /// 1, 0, or -1.
    pub normalize: c_int,
    /// Tokens per text, or 0.
    pub max_length: usize,
}

/// The overrides `options` asks for (NULL: none).
///
/// # Safety
/// `options` is NULL or points to an initialized `EtsEmbedOptions` whose `pooling` is NULL or
/// NUL-terminated.
unsafe fn overrides(options: *const EtsEmbedOptions) -> Result<Overrides, String> {
    // SAFETY: the caller's contract.
    let Some(o) = (unsafe { options.as_ref() }) else {
        return Ok(Overrides::default());
    };
    let pooling = if o.pooling.is_null() {
        None
    } else {
        let name = c_str(o.pooling, "options.pooling")?;
        Some(
            crate::runtime::embed::pooling_from_name(name)
                .ok_or_else(|| format!("options.pooling {name:?} is not \"mean\" or \"cls\""))?,
        )
    };
    let normalize = match o.normalize {
        -1 => None,
        0 => Some(false),
        1 => Some(true),
        n => {
            return Err(format!(
                "options.normalize is {n}; use 1, 0, or -1 for the file's"
            ))
        }
    };
    let max_length = (o.max_length != 0).then_some(o.max_length);
    Ok(Overrides {
        pooling,
        normalize,
        max_length,
    })
}

fn encoder_handle(
    file: Arc<EtsFile>,
    device: *const c_char,
    overrides: &Overrides,
) -> Result<*mut EtsEncoderHandle, String> {
    let device = if device.is_null() {
        Device::Auto
    } else {
        Device::from_name(c_str(device, "device")?).map_err(|e| e.to_string())?
    };
    let embedder = SharedEmbedder::new(file, device, overrides).map_err(|e| e.to_string())?;
    Ok(Box::into_raw(Box::new(EtsEncoderHandle { embedder })))
}

/// Opens the file at `path` and builds an encoder on `device` ("cpu", "cuda", or "auto"; NULL
/// means "auto"), with the file's embedding settings. NULL on failure.
///
/// # Safety
/// `path` and `device` are NULL or NUL-terminated strings.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_open(
    path: *const c_char,
    device: *const c_char,
) -> *mut EtsEncoderHandle {
    // SAFETY: the caller's contract; NULL options are allowed.
    unsafe { ets_encoder_open_with(path, device, std::ptr::null()) }
}

/// [`ets_encoder_open`] with embedding settings replacing the file's (`options` NULL: none).
///
/// # Safety
/// `path` and `device` are NULL or NUL-terminated strings; `options` is NULL or points to an
/// initialized `ets_embed_options` whose `pooling` is NULL or NUL-terminated.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_open_with(
    path: *const c_char,
    device: *const c_char,
    options: *const EtsEmbedOptions,
) -> *mut EtsEncoderHandle {
    guard(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let overrides = unsafe { overrides(options) }?;
        encoder_handle(open_file(c_str(path, "path")?)?, device, &overrides)
    })
}

/// Builds an encoder on an open file (which may then be closed first). NULL on failure.
///
/// # Safety
/// `file` is NULL or an open handle; `device` NULL or NUL-terminated.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_from_file(
    file: *const EtsFileHandle,
    device: *const c_char,
) -> *mut EtsEncoderHandle {
    // SAFETY: the caller's contract; NULL options are allowed.
    unsafe { ets_encoder_from_file_with(file, device, std::ptr::null()) }
}

/// [`ets_encoder_from_file`] with embedding settings replacing the file's (`options` NULL: none).
///
/// # Safety
/// `file` is NULL or an open handle; `device` NULL or NUL-terminated; `options` is NULL or points
/// to an initialized `ets_embed_options` whose `pooling` is NULL or NUL-terminated.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_from_file_with(
    file: *const EtsFileHandle,
    device: *const c_char,
    options: *const EtsEmbedOptions,
) -> *mut EtsEncoderHandle {
    guard(std::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let overrides = unsafe { overrides(options) }?;
        encoder_handle(
            Arc::clone(&non_null(file, "file")?.file),
            device,
            &overrides,
        )
    })
}

/// Closes an encoder; NULL is ignored.
///
/// # Safety
/// `encoder` is NULL or a handle not closed before.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_close(encoder: *mut EtsEncoderHandle) {
    if !encoder.is_null() {
        // SAFETY: a handle from `ets_encoder_open`/`_from_file`, closed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(encoder) })));
    }
}

/// Width of one embedding (0 with an error recorded when `encoder` is NULL).
///
/// # Safety
/// `encoder` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_hidden_size(encoder: *const EtsEncoderHandle) -> usize {
    guard(0, || {
        Ok(non_null(encoder, "encoder")?.embedder.hidden_size())
    })
}

/// The runtime in use: "cpu" or "cuda" (a static string).
///
/// # Safety
/// `encoder` is NULL or an open handle.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_device(encoder: *const EtsEncoderHandle) -> *const c_char {
    guard(std::ptr::null(), || {
        Ok(match non_null(encoder, "encoder")?.embedder.device() {
            "cuda" => c"cuda".as_ptr(),
            _ => c"cpu".as_ptr(),
        })
    })
}

/// Embeds `count` token-id sequences: sequence `i` is the next `lengths[i]` ids of `ids`
/// (special tokens included, token types 0). Writes `count * hidden_size` floats to `out`, which
/// holds `out_len`; `batch_size` sequences run at a time (0 means 32). 0, or -1.
///
/// # Safety
/// `encoder` is NULL or an open handle; `ids` holds the sum of `lengths`; `lengths` holds
/// `count`; `out` holds `out_len` writable floats.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_embed(
    encoder: *const EtsEncoderHandle,
    ids: *const u32,
    lengths: *const usize,
    count: usize,
    batch_size: usize,
    out: *mut f32,
    out_len: usize,
) -> c_int {
    guard(-1, || {
        let e = &non_null(encoder, "encoder")?.embedder;
        let lengths = buffer(lengths, count, "lengths")?;
        let total = lengths
            .iter()
            .try_fold(0usize, |a, &n| a.checked_add(n))
            .ok_or("the lengths overflow")?;
        let ids = buffer(ids, total, "ids")?;
        let (out, need) = embedding_output(out, out_len, count, e.hidden_size())?;
        let mut start = 0;
        let sequences = lengths
            .iter()
            .map(|&n| {
                let s = TokenSequence::new(ids[start..start + n].to_vec());
                start += n;
                s
            })
            .collect();
        let batch = TokenBatch { sequences };
        let size = if batch_size == 0 {
            DEFAULT_BATCH
        } else {
            batch_size
        };
        let vectors = e.embed_tokens(&batch, size).map_err(|e| e.to_string())?;
        out[..need].copy_from_slice(&vectors);
        Ok(0)
    })
}

/// Embeds `count` texts (UTF-8, NUL-terminated) with the file's tokenizer, as `et-run` does
/// (longer texts truncated to the maximum length). Writes `count * hidden_size` floats to `out`,
/// which holds `out_len`; `batch_size` 0 means 32. 0, or -1.
///
/// # Safety
/// `encoder` is NULL or an open handle; `texts` holds `count` NUL-terminated strings; `out`
/// holds `out_len` writable floats.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn ets_encoder_embed_texts(
    encoder: *const EtsEncoderHandle,
    texts: *const *const c_char,
    count: usize,
    batch_size: usize,
    out: *mut f32,
    out_len: usize,
) -> c_int {
    guard(-1, || {
        let e = &non_null(encoder, "encoder")?.embedder;
        let texts = buffer(texts, count, "texts")?
            .iter()
            .enumerate()
            .map(|(i, &t)| c_str(t, &format!("texts[{i}]")))
            .collect::<Result<Vec<&str>, String>>()?;
        let (out, need) = embedding_output(out, out_len, count, e.hidden_size())?;
        let size = if batch_size == 0 {
            DEFAULT_BATCH
        } else {
            batch_size
        };
        let vectors = e.embed(&texts, size).map_err(|e| e.to_string())?;
        out[..need].copy_from_slice(&vectors);
        Ok(0)
    })
}
