//! Build-time facts for result provenance: the git commit of this build, as
//! the `VARGPT_GIT_COMMIT` compile-time variable. Taken from the environment
//! variable of the same name when set (a Docker build has no `.git`), else
//! from `git rev-parse --short HEAD`, else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VARGPT_GIT_COMMIT");
    let commit = std::env::var("VARGPT_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=VARGPT_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // Build again when HEAD moves: a new commit rewrites the branch's ref
    // (loose or packed), a checkout rewrites HEAD. Only existing files are
    // named: a missing one would make cargo rerun this script every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(dir.join(r));
        }
        for p in watched.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(commit)
}
