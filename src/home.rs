//! The home directory: config.inc, data/, logs/, pid/.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// Sets the umask first so that nothing created afterwards is readable by "other"
    /// (the original asks for `chmod -R u+rwX,g+rwXs,o-rwx data logs pid`).
    pub fn open(root: PathBuf) -> anyhow::Result<Home> {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
        for dir in ["data", "logs"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        Ok(Home { root })
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.inc")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn store_path(&self) -> PathBuf {
        self.data().join("backproc.sqlite")
    }
    /// BACKPROC_PID_LOCATION, relative to the home unless absolute; created when missing.
    pub fn pid_dir(&self, location: &str) -> anyhow::Result<PathBuf> {
        let p = self.root.join(Path::new(location));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(p)
    }
}
