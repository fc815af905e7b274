//! Finds the ZooKeeper server jars and a Java runtime on this machine.
//!
//! Looked up in order: `$ZOOKEEPER_HOME/lib` (an Apache tarball), then `/usr/share/java`
//! (Debian's `zookeeper` package). `scripts/setup.sh` installs the latter when neither exists.

use std::path::{Path, PathBuf};

/// What is needed to start a ZooKeeper server process.
#[derive(Debug, Clone)]
pub struct Install {
    /// The `java` executable.
    pub java: PathBuf,
    /// The class path holding the server and a logging backend.
    pub classpath: String,
}

/// Finds the installed ZooKeeper, or says what is missing and how to get it.
pub fn find() -> Result<Install, String> {
    let java = find_java().ok_or_else(|| {
        "no `java` found (set JAVA_HOME or run scripts/setup.sh to install a JRE)".to_string()
    })?;
    if let Ok(home) = std::env::var("ZOOKEEPER_HOME") {
        let lib = Path::new(&home).join("lib");
        let jars = jars_in(&lib);
        if jars.iter().any(|j| file_name(j).starts_with("zookeeper-")) {
            return Ok(Install {
                java,
                classpath: join(&jars),
            });
        }
        return Err(format!(
            "ZOOKEEPER_HOME={home} has no zookeeper jar in {}",
            lib.display()
        ));
    }
    let debian = Path::new("/usr/share/java");
    let server = debian.join("zookeeper.jar");
    if server.exists() {
        // Debian's zookeeper.jar names its dependencies in its manifest class path, nearly all.
        let mut jars = vec![server];
        // A logging backend; and two Netty jars the manifest omits, which the Netty connection
        // factory (TLS) needs.
        for extra in ["slf4j-simple.jar", "netty-codec.jar", "netty-resolver.jar"] {
            let jar = debian.join(extra);
            if jar.exists() {
                jars.push(jar);
            }
        }
        return Ok(Install {
            java,
            classpath: join(&jars),
        });
    }
    Err(
        "ZooKeeper is not installed: run scripts/setup.sh (installs Debian's `zookeeper`) \
         or set ZOOKEEPER_HOME to an Apache ZooKeeper 3.8 directory"
            .to_string(),
    )
}

fn find_java() -> Option<PathBuf> {
    if let Ok(home) = std::env::var("JAVA_HOME") {
        let java = Path::new(&home).join("bin/java");
        if java.exists() {
            return Some(java);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|java| java.exists())
}

fn jars_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut jars: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jar"))
        .collect();
    jars.sort();
    jars
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn join(jars: &[PathBuf]) -> String {
    jars.iter()
        .map(|j| j.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}
