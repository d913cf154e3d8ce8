//! The kernel choices `neuroal tune` keeps per adapter: a small text file in the user's cache
//! folder, read when the GPU is opened, so that every later run on that card computes with the
//! same kernels (and so repeats its masks).

use std::path::{Path, PathBuf};

use burn::tensor::DType;

use crate::gpu::attention::AttentionRules;
use crate::gpu::kernels::{Select, Walk};
use crate::gpu::matmul::Rules;
use crate::io::error::{Context, Result};
use crate::{bail, err};

/// The folder the tuned files live in: the user's cache folder (`$XDG_CACHE_HOME` or
/// `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows), `neuroal`
/// inside it. `None` where none is known.
pub fn tuned_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("neuroal"))
}

/// An adapter's key, as a file name can hold it: its name, graphics API and compiler (a driver's
/// kernels are compiled per API and compiler, so each pair is tuned apart).
pub fn adapter_key(name: &str, api: &str, compiler: &str) -> String {
    let raw = format!("{name} {api} {compiler}");
    let mut key = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' };
        if !(c == '-' && key.ends_with('-')) {
            key.push(c);
        }
    }
    key.trim_matches('-').to_string()
}

/// The tuned file of the adapter `key`.
pub fn tuned_path(key: &str) -> Option<PathBuf> {
    tuned_dir().map(|d| d.join(format!("kernels-{key}.txt")))
}

/// What `neuroal tune` kept for an adapter: per compute dtype, the matrix products' rules, the
/// attention kernel per head size, and which groups of linears that read one input multiply
/// as one product (`src/gpu/fused.rs`); and how the row selection runs (`kernels::Select`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuned {
    /// The file it was read from.
    pub path: Option<PathBuf>,
    pub matmul: Vec<(DType, Rules)>,
    pub attention: Vec<(DType, AttentionRules)>,
    pub fuse: Vec<(DType, crate::gpu::fused::Rules)>,
    pub select: Option<Select>,
}

fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

pub const AGAIN: &str = "run `neuroal tune` again, or delete the file";

/// A tuned file's lines: `matmul DTYPE RULES`, `attention DTYPE RULES` and `fuse DTYPE RULES`,
/// one of each per dtype tuned, and one `select serial|two-level COPIES`; `#` begins a comment.
pub fn parse_file(text: &str, path: &Path) -> Result<Tuned> {
    let mut tuned = Tuned { path: Some(path.to_path_buf()), ..Tuned::default() };
    for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let source = format!("{}, line {i}", path.display());
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["select", walk, copies] = words[..] {
            let Some(walk) = Walk::named(walk) else {
                bail!("{source}: no digit walk is named {walk} (serial or two-level) ({AGAIN})");
            };
            let Some(copies) = Select::copies_named(copies) else {
                bail!("{source}: {copies} histogram copies: expected 1, 2, 4 or 8 ({AGAIN})");
            };
            if tuned.select.replace(Select { walk, copies }).is_some() {
                bail!("{source}: a second select line ({AGAIN})");
            }
            continue;
        }
        let words: Vec<&str> = line.splitn(3, char::is_whitespace).collect();
        let (kind, dtype, rules) = match words[..] {
            [kind @ ("matmul" | "attention" | "fuse"), dtype, rules] if dtype_named(dtype).is_some() => {
                (kind, dtype_named(dtype).unwrap_or(DType::F32), rules.trim())
            }
            _ => bail!(
                "{source}: expected `matmul|attention|fuse f32|f16|bf16 RULES` or `select serial|two-level COPIES`, found {line:?} ({AGAIN})"
            ),
        };
        let again = |e: crate::io::error::Error| err!("{e} ({AGAIN})");
        let twice = || err!("{source}: a second {kind} {} line ({AGAIN})", crate::gpu::tensor::dtype_name(dtype));
        match kind {
            "matmul" => add_line(&mut tuned.matmul, dtype, twice, || Rules::parse(rules, &source).map_err(again))?,
            "fuse" => add_line(&mut tuned.fuse, dtype, twice, || {
                crate::gpu::fused::Rules::parse(rules, &source).map_err(again)
            })?,
            _ => add_line(&mut tuned.attention, dtype, twice, || AttentionRules::parse(rules, &source).map_err(again))?,
        }
    }
    Ok(tuned)
}

/// Adds a tuned file's line for `dtype` to its kind's `lines`: `twice`'s error where that dtype
/// has one already, else what `parse` makes of it.
fn add_line<T>(
    lines: &mut Vec<(DType, T)>,
    dtype: DType,
    twice: impl FnOnce() -> crate::io::error::Error,
    parse: impl FnOnce() -> Result<T>,
) -> Result<()> {
    if lines.iter().any(|(d, _)| *d == dtype) {
        return Err(twice());
    }
    lines.push((dtype, parse()?));
    Ok(())
}

/// What `neuroal tune` kept for the adapter `key`: nothing where it was not tuned; a one-line
/// error where the file cannot be read or understood.
pub fn read_tuned(key: &str) -> Result<Tuned> {
    let Some(path) = tuned_path(key) else { return Ok(Tuned::default()) };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tuned::default()),
        Err(e) => bail!("{}: cannot read the tuned kernels: {}", path.display(), crate::io::error::io_words(&e)),
    }
}

/// Writes the tuned file whole or not at all (`staging::write_whole`).
pub fn write_tuned(path: &Path, adapter: &str, tuned: &Tuned) -> Result<()> {
    let dir = path.parent().ok_or_else(|| err!("{}: no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let mut text = format!(
        "# neuroal tune: on {adapter}, per compute dtype, the fastest matrix-product kernel per weight shape\n# KxN (input x output size), attention kernel per head size, and whether the linears that read\n# one input (KxN1+N2+...) multiply as one product; and the row selection's fastest digit walk\n# and first-digit histogram copies. NEUROAL_MATMUL, NEUROAL_ATTENTION, NEUROAL_FUSE,\n# NEUROAL_SELECT_WALK and NEUROAL_SELECT_COPIES override it; delete this file to undo.\n"
    );
    let mut lines: Vec<String> =
        tuned.matmul.iter().map(|(d, r)| format!("matmul {} {r}", crate::gpu::tensor::dtype_name(*d))).collect();
    lines.extend(tuned.attention.iter().map(|(d, r)| format!("attention {} {r}", crate::gpu::tensor::dtype_name(*d))));
    lines.extend(tuned.fuse.iter().map(|(d, r)| format!("fuse {} {r}", crate::gpu::tensor::dtype_name(*d))));
    lines.extend(tuned.select.map(|v| format!("select {} {}", v.walk.name(), v.copies)));
    lines.sort();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    crate::io::staging::write_whole(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuned_files_round_trip_and_bad_ones_get_one_line() {
        let path = Path::new("/x/kernels-gpu.txt");
        let text = "# comment\nmatmul f16 4096x4096=a,4096x11008=burn,b\n\nmatmul f32 burn\nattention f16 64=flash-2,128=ops\nfuse f16 4096x4096+4096+4096=off,4096x11008+11008=on\nselect  two-level 8 \n";
        let t = parse_file(text, path).unwrap();
        assert_eq!(t.matmul.len(), 2);
        assert_eq!(t.matmul[0].0, DType::F16);
        assert_eq!(t.matmul[0].1.to_string(), "4096x4096=a,4096x11008=burn,b");
        assert_eq!(t.matmul[1], (DType::F32, Rules::default()));
        assert_eq!(t.attention, vec![(DType::F16, AttentionRules(vec![(64, "flash-2".into()), (128, "ops".into())]))]);
        assert_eq!(t.fuse.len(), 1);
        assert_eq!(t.fuse[0].1.to_string(), "4096x4096+4096+4096=off,4096x11008+11008=on");
        assert_eq!(t.select, Some(Select { walk: Walk::TwoLevel, copies: 8 }));
        assert_eq!(parse_file("select serial 1", path).unwrap().select, Some(Select::DEFAULT));
        assert_eq!(parse_file("matmul f32 burn", path).unwrap().select, None);
        let dir = std::env::temp_dir().join(format!("neuroal-tuned-unit-{}", std::process::id()));
        let file = dir.join("kernels-gpu.txt");
        write_tuned(&file, "a GPU", &t).unwrap();
        let back = parse_file(&std::fs::read_to_string(&file).unwrap(), &file).unwrap();
        assert_eq!(
            (back.matmul.len(), back.attention, back.fuse, back.select),
            (2, t.attention.clone(), t.fuse.clone(), t.select)
        );
        let _ = std::fs::remove_dir_all(&dir);
        for (bad, says) in [
            ("f16 a", "expected `matmul|attention|fuse f32|f16|bf16 RULES`"),
            ("matmul f64 a", "expected `matmul|attention|fuse f32|f16|bf16 RULES`"),
            ("fuse f16 64x64+16=on\nfuse f16 64x64+16=off", "a second fuse f16 line"),
            ("fuse f16 64x64=on", "a group is KxN1+N2"),
            ("matmul f16 a\nmatmul f16 b", "a second matmul f16 line"),
            ("matmul f16 0x64=a", "a rule is KxN=KERNEL"),
            ("matmul f16 a,b", "names two kernels"),
            ("attention f16 64", "an attention rule is HEAD_SIZE=KERNEL"),
            ("attention f16 0=ops", "an attention rule is HEAD_SIZE=KERNEL"),
            ("attention f16 64=flash-3", "no attention kernel is named flash-3"),
            ("select serial", "or `select serial|two-level COPIES`"),
            ("select f16 serial 1", "or `select serial|two-level COPIES`"),
            ("select radix 1", "no digit walk is named radix"),
            ("select serial 16", "16 histogram copies: expected 1, 2, 4 or 8"),
            ("select serial 1\nselect two-level 2", "a second select line"),
        ] {
            let msg = parse_file(bad, path).unwrap_err().to_string();
            assert!(
                msg.starts_with("/x/kernels-gpu.txt, line")
                    && msg.contains(says)
                    && msg.contains(AGAIN)
                    && !msg.contains('\n'),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn newer_rules_replace_a_shape_and_keep_the_others() {
        let old = Rules::parse("64x64=a,64x172=b,c", "t").unwrap();
        let new = Rules::parse("64x172=d,128x64=e,burn", "t").unwrap();
        assert_eq!(old.updated_by(new).to_string(), "64x64=a,64x172=d,128x64=e,burn");
        let old = AttentionRules::parse("64=ops,128=flash-2", "t").unwrap();
        assert_eq!(old.updated_by(AttentionRules(vec![(64, "flash-4".into())])).to_string(), "64=flash-4,128=flash-2");
    }

    #[test]
    fn adapter_keys_are_file_names() {
        assert_eq!(
            adapter_key("NVIDIA H100 80GB HBM3", "Vulkan", "wgpu<spirv>"),
            "NVIDIA-H100-80GB-HBM3-Vulkan-wgpu-spirv"
        );
        assert_eq!(
            adapter_key("llvmpipe (LLVM 15.0.7, 256 bits)", "Gl", "wgpu<wgsl>"),
            "llvmpipe-LLVM-15.0.7-256-bits-Gl-wgpu-wgsl"
        );
    }
}
