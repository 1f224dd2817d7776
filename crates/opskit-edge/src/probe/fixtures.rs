//! Fixtures the opt-in checks stage on the server, removed again when the probe ends.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use opskit_core::config::NginxConfig;

/// Name of the probe's PHP script under the API root (`/api/__opskit_probe`).
pub const PROBE_SCRIPT: &str = "__opskit_probe";
/// Static fixture with a precompressed `.gz` next to it.
pub const STATIC_CSS: &str = "__opskit_probe.css";
/// Static fixture without a `.gz` (compressed on the fly).
pub const STATIC_JS: &str = "__opskit_probe.js";
/// Marker text in the staged `index.html`.
pub const INDEX_MARKER: &str = "opskit-probe-index";
/// Marker text in the staged `public/index.html`.
pub const PUBLIC_MARKER: &str = "opskit-probe-public";

/// The PHP script: echoes what the FastCGI side saw, as JSON.
const PROBE_PHP: &str = r#"<?php
header('Content-Type: application/json');
echo json_encode([
    'probe' => 'opskit',
    'SCRIPT_FILENAME' => $_SERVER['SCRIPT_FILENAME'] ?? null,
    'SCRIPT_NAME' => $_SERVER['SCRIPT_NAME'] ?? null,
    'QUERY_STRING' => $_SERVER['QUERY_STRING'] ?? null,
    'REQUEST_URI' => $_SERVER['REQUEST_URI'] ?? null,
    'REQUEST_METHOD' => $_SERVER['REQUEST_METHOD'] ?? null,
    'HTTPS' => $_SERVER['HTTPS'] ?? null,
    'BODY_LENGTH' => strlen(file_get_contents('php://input')),
]);
"#;

/// The directory served as `/static/`.
pub fn static_dir(cfg: &NginxConfig) -> PathBuf {
    match &cfg.static_root {
        Some(dir) => dir.path().to_path_buf(),
        None => cfg.web_root.path().join("static"),
    }
}

/// A text body of at least 1 KiB so gzip applies (gzip_min_length 256).
pub fn static_text(kind: &str) -> String {
    let mut s = format!("/* opskit probe {kind} fixture */\n");
    for i in 0..64 {
        s.push_str(&format!(
            ".opskit-probe-{i} {{ color: #{:06x}; }}\n",
            i * 4099
        ));
    }
    s
}

/// Files written by the probe; removed on drop.
pub struct Staged {
    files: Vec<PathBuf>,
    created_dir: Option<PathBuf>,
}

impl Staged {
    /// Writes the probe script and the static fixtures.
    pub fn write(cfg: &NginxConfig) -> anyhow::Result<Staged> {
        let mut staged = Staged {
            files: Vec::new(),
            created_dir: None,
        };
        let dir = static_dir(cfg);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            staged.created_dir = Some(dir.clone());
        }
        let css = static_text("css");
        staged.put(
            &cfg.api_root.path().join(format!("{PROBE_SCRIPT}.php")),
            PROBE_PHP.as_bytes(),
        )?;
        staged.put(&dir.join(STATIC_CSS), css.as_bytes())?;
        staged.put(
            &dir.join(format!("{STATIC_CSS}.gz")),
            &gzip_stored(css.as_bytes()),
        )?;
        staged.put(&dir.join(STATIC_JS), static_text("js").as_bytes())?;
        Ok(staged)
    }

    fn put(&mut self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        std::fs::write(path, bytes).with_context(|| {
            format!(
                "staging probe fixture {} (needs write access on the server)",
                path.display()
            )
        })?;
        set_world_readable(path);
        self.files.push(path.to_path_buf());
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(d) = &self.created_dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn set_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
}

/// Which index files exist during a fallback scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// Both `index.html` and `public/index.html`.
    Both,
    /// Only `public/index.html`.
    PublicOnly,
    /// Neither.
    Neither,
}

/// Moves the site's own index files aside and stages marker files; restores them on drop.
pub struct IndexStage {
    index: PathBuf,
    public: PathBuf,
    saved: Vec<(PathBuf, PathBuf)>,
    created_public_dir: bool,
}

impl IndexStage {
    /// Saves the existing index files (renamed with a `.opskit-probe-saved` suffix).
    pub fn new(cfg: &NginxConfig) -> anyhow::Result<IndexStage> {
        let root = cfg.web_root.path();
        let public_dir = root.join("public");
        let created_public_dir = !public_dir.exists();
        std::fs::create_dir_all(&public_dir)
            .with_context(|| format!("creating {}", public_dir.display()))?;
        let mut stage = IndexStage {
            index: root.join("index.html"),
            public: public_dir.join("index.html"),
            saved: Vec::new(),
            created_public_dir,
        };
        for f in [stage.index.clone(), stage.public.clone()] {
            if f.exists() {
                let aside = f.with_extension("html.opskit-probe-saved");
                std::fs::rename(&f, &aside)
                    .with_context(|| format!("moving {} aside", f.display()))?;
                stage.saved.push((aside, f));
            }
        }
        Ok(stage)
    }

    /// Puts the marker files in place for `state`.
    pub fn set(&self, state: IndexState) -> anyhow::Result<()> {
        let write = |p: &Path, marker: &str| -> anyhow::Result<()> {
            std::fs::write(
                p,
                format!("<!doctype html><title>{marker}</title>{marker}\n"),
            )
            .with_context(|| format!("writing {}", p.display()))?;
            set_world_readable(p);
            Ok(())
        };
        let _ = std::fs::remove_file(&self.index);
        let _ = std::fs::remove_file(&self.public);
        match state {
            IndexState::Both => {
                write(&self.index, INDEX_MARKER)?;
                write(&self.public, PUBLIC_MARKER)?;
            }
            IndexState::PublicOnly => write(&self.public, PUBLIC_MARKER)?,
            IndexState::Neither => {}
        }
        Ok(())
    }
}

impl Drop for IndexStage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.index);
        let _ = std::fs::remove_file(&self.public);
        for (aside, original) in &self.saved {
            let _ = std::fs::rename(aside, original);
        }
        if self.created_public_dir
            && let Some(dir) = self.public.parent()
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks: a valid `.gz` for
/// `gzip_static` without a compression library.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn stored_gzip_is_accepted_by_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gz");
        let text = static_text("css");
        std::fs::write(&p, gzip_stored(text.as_bytes())).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
    }
}
