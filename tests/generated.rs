//! The committed `man/` pages and `completions/` scripts are generated from
//! `aigate::cli::Cli`; this test fails when they are stale, and rewrites them when run
//! with `AIGATE_REGENERATE=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

const REGENERATE: &str = "AIGATE_REGENERATE=1 cargo test --test generated";

/// Every generated file, by path relative to the crate root.
fn render() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();

    // One page per command and subcommand, named like clap_mangen::generate_to names
    // them (aigate.1, aigate-key.1, aigate-key-create.1, …), without `help`.
    fn pages(cmd: &clap::Command, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, files);
        }
        // The footer names the program, not the subcommand ("create 0.1.0").
        let source = format!("aigate {}", env!("CARGO_PKG_VERSION"));
        let man = clap_mangen::Man::new(cmd.clone()).source(source);
        let mut page = Vec::new();
        man.render(&mut page).expect("render a man page");
        files.insert(Path::new("man").join(man.get_filename()), page);
    }
    let mut cmd = aigate::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    pages(&cmd, &mut files);

    // Exactly what `aigate completions SHELL` prints.
    for (shell, name) in [
        (Shell::Bash, "aigate.bash"),
        (Shell::Zsh, "_aigate"),
        (Shell::Fish, "aigate.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut aigate::cli::Cli::command(),
            "aigate",
            &mut script,
        );
        files.insert(Path::new("completions").join(name), script);
    }
    files
}

/// Files now in `man/` and `completions/`, relative to the crate root.
fn committed(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["man", "completions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("read a directory entry");
            if entry.file_type().expect("file type").is_file() {
                found.push(Path::new(dir).join(entry.file_name()));
            }
        }
    }
    found
}

#[test]
fn man_pages_and_completions_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rendered = render();
    assert!(rendered.contains_key(Path::new("man/aigate.1")));
    assert!(rendered.contains_key(Path::new("man/aigate-key-create.1")));
    assert!(!rendered.contains_key(Path::new("man/aigate-help.1")));

    if std::env::var_os("AIGATE_REGENERATE").is_some_and(|v| v == "1") {
        for stale in committed(root) {
            if !rendered.contains_key(&stale) {
                std::fs::remove_file(root.join(&stale)).expect("remove a stale file");
            }
        }
        for (path, bytes) in &rendered {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().expect("a parent")).expect("create a folder");
            std::fs::write(&full, bytes).expect("write a generated file");
        }
        return;
    }

    let mut problems = Vec::new();
    for (path, bytes) in &rendered {
        match std::fs::read(root.join(path)) {
            Ok(old) if old == *bytes => {}
            Ok(_) => problems.push(format!("{} is out of date", path.display())),
            Err(_) => problems.push(format!("{} is missing", path.display())),
        }
    }
    for path in committed(root) {
        if !rendered.contains_key(&path) {
            problems.push(format!("{} is no longer generated", path.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "the generated docs are stale ({}); run `{REGENERATE}` and commit the result",
        problems.join(", ")
    );
}
