//! `wasmq new`: a task project in its own directory, built with that
//! language's own tools and nothing from this repository's build. The files
//! are templates embedded in the binary (`templates/`); the SDK comes from a
//! wasmq checkout (`--sdk`), since the SDKs are not published yet: Rust
//! projects depend on its crate by path, Python and JavaScript ones install
//! its package (a wheel built from `guest-sdk/python`, a tarball packed from
//! `guest-sdk/js`; their READMEs and the Python Makefile say how, with the
//! checkout's path filled in), and C projects get copies of its helpers.

use super::exit::Exit;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's and module's name: lowercase letters, digits and `-`,
    /// starting with a letter.
    pub name: String,
    /// The task's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The directory to write (default: ./NAME); refused if it holds anything.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// The wasmq checkout whose SDK and WIT the project uses (default: the one
    /// this binary was built from).
    #[arg(long, value_name = "DIR")]
    pub sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// A file of the project: its path there, and where its text comes from.
enum Source {
    /// An embedded template, with `{{name}}`, `{{sdk}}` (the checkout's
    /// absolute path) and `{{wasm}}` (the component's path) filled in.
    Template(&'static str),
    /// A file of the SDK checkout, by its path there.
    Sdk(&'static str),
}

use Source::{Sdk, Template};

/// Every language's README ends with how to run the component.
const RUN_MD: &str = include_str!("templates/run.md");

/// The WIT package every component implements: the `task` world, and the
/// worlds that add what an operator grants (wit/granted.wit: `granted-task`
/// for config and secrets, `http-task` for outbound HTTP) with the WASI
/// packages they import.
const WIT: [(&str, Source); 7] = [
    ("wit/task.wit", Sdk("wit/task.wit")),
    ("wit/granted.wit", Sdk("wit/granted.wit")),
    (
        "wit/deps/config/store.wit",
        Sdk("wit/deps/config/store.wit"),
    ),
    (
        "wit/deps/config/world.wit",
        Sdk("wit/deps/config/world.wit"),
    ),
    ("wit/deps/http/http.wit", Sdk("wit/deps/http/http.wit")),
    ("wit/deps/io/io.wit", Sdk("wit/deps/io/io.wit")),
    (
        "wit/deps/clocks/clocks.wit",
        Sdk("wit/deps/clocks/clocks.wit"),
    ),
];

fn files(lang: Lang) -> Vec<(&'static str, Source)> {
    let mut files = match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                Template(include_str!("templates/rust/Cargo.toml")),
            ),
            (
                "src/lib.rs",
                Template(include_str!("templates/rust/src/lib.rs")),
            ),
            (
                "README.md",
                Template(include_str!("templates/rust/README.md")),
            ),
            (
                ".gitignore",
                Template(include_str!("templates/rust/gitignore")),
            ),
            // The versions the examples are built and tested with.
            ("Cargo.lock", Sdk("examples/Cargo.lock")),
        ],
        Lang::Python => vec![
            ("app.py", Template(include_str!("templates/python/app.py"))),
            (
                "test_app.py",
                Template(include_str!("templates/python/test_app.py")),
            ),
            (
                "Makefile",
                Template(include_str!("templates/python/Makefile")),
            ),
            (
                "README.md",
                Template(include_str!("templates/python/README.md")),
            ),
            (
                ".gitignore",
                Template(include_str!("templates/python/gitignore")),
            ),
        ],
        Lang::Js => vec![
            ("task.js", Template(include_str!("templates/js/task.js"))),
            (
                "task.test.mjs",
                Template(include_str!("templates/js/task.test.mjs")),
            ),
            (
                "package.json",
                Template(include_str!("templates/js/package.json")),
            ),
            (
                "README.md",
                Template(include_str!("templates/js/README.md")),
            ),
            (
                ".gitignore",
                Template(include_str!("templates/js/gitignore")),
            ),
            // componentize-js, rolldown and their dependencies, as the
            // examples pin them.
            ("package-lock.json", Sdk("examples/js/package-lock.json")),
        ],
        Lang::C => vec![
            ("task.c", Template(include_str!("templates/c/task.c"))),
            (
                "test_task.c",
                Template(include_str!("templates/c/test_task.c")),
            ),
            ("Makefile", Template(include_str!("templates/c/Makefile"))),
            ("README.md", Template(include_str!("templates/c/README.md"))),
            (
                ".gitignore",
                Template(include_str!("templates/c/gitignore")),
            ),
            ("wasmq.c", Sdk("guest-sdk/c/wasmq.c")),
            ("wasmq.h", Sdk("guest-sdk/c/wasmq.h")),
            ("wasmq_testing.c", Sdk("guest-sdk/c/wasmq_testing.c")),
            ("wasmq_testing.h", Sdk("guest-sdk/c/wasmq_testing.h")),
            ("adapter/Cargo.toml", Sdk("examples/c/adapter/Cargo.toml")),
            ("adapter/Cargo.lock", Sdk("examples/c/adapter/Cargo.lock")),
            ("adapter/src/lib.rs", Sdk("examples/c/adapter/src/lib.rs")),
        ],
    };
    // The Rust SDK carries its WIT; the other languages' tools read it here.
    if !matches!(lang, Lang::Rust) {
        files.extend(WIT);
    }
    files
}

/// Where the component lands, relative to the project.
fn wasm_path(lang: Lang, name: &str) -> String {
    match lang {
        Lang::Rust => format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        Lang::Python | Lang::Js | Lang::C => format!("{name}.wasm"),
    }
}

/// The version of the Python and npm packages of the SDK (the WIT package's),
/// which names the tarball `npm pack` writes.
const SDK_VERSION: &str = "0.1.1";

/// The commands that test and build it, for the closing message.
fn build_hint(lang: Lang, sdk: &Path) -> String {
    match lang {
        Lang::Rust => "cargo test && cargo build --release --target wasm32-wasip2".to_owned(),
        Lang::Python => "make sdk && make test && make".to_owned(),
        Lang::C => "make test && make".to_owned(),
        Lang::Js => format!(
            "npm pack {}/guest-sdk/js && npm install ./wasmq-guest-{SDK_VERSION}.tgz \
             && npm test && npm run build",
            sdk.display()
        ),
    }
}

/// Module names are also crate, package and file names: keep them to what
/// every language's tools take.
fn check_name(name: &str) -> Result<(), Exit> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Exit::usage(format!(
            "invalid name {name:?}: use lowercase letters, digits and `-`, starting with a letter \
             and not ending with `-` (at most 64 characters), e.g. `resize-image`"
        )))
    }
}

/// The SDK checkout: `--sdk`, else the repository this binary was built from
/// while it is still there.
fn sdk_dir(arg: Option<&Path>) -> Result<PathBuf, Exit> {
    let (dir, hint) = match arg {
        Some(dir) => (dir.to_path_buf(), ""),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            " (the checkout this binary was built from): pass `--sdk DIR`, a wasmq checkout",
        ),
    };
    let marker = dir.join("guest-sdk/Cargo.toml");
    if !marker.is_file() {
        return Err(Exit::usage(format!(
            "no wasmq SDK at {}{hint}: {} is missing",
            dir.display(),
            marker.display()
        )));
    }
    dir.canonicalize()
        .map_err(|e| Exit::usage(format!("cannot resolve {}: {e}", dir.display())))
}

/// Refuses a target that exists and holds anything.
fn check_target(dir: &Path) -> Result<(), Exit> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(Exit::usage(format!(
            "{} exists and is not empty: choose another --path",
            dir.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(Exit::usage(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(Exit::usage(format!("cannot read {}: {e}", dir.display()))),
    }
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let sdk = sdk_dir(args.sdk.as_deref())?;
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&args.name));
    check_target(&dir)?;

    let wasm = wasm_path(args.lang, &args.name);
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{sdk}}", &sdk.to_string_lossy())
            .replace("{{wasm}}", &wasm)
    };
    // Read everything first, so that a missing SDK file leaves no half-made project.
    let mut out = Vec::new();
    for (path, source) in files(args.lang) {
        let text = match source {
            Template(text) if path == "README.md" => fill(&format!("{text}\n{RUN_MD}")),
            Template(text) => fill(text),
            Sdk(from) => {
                let from = sdk.join(from);
                let text = std::fs::read_to_string(&from)
                    .map_err(|e| Exit::usage(format!("cannot read {}: {e}", from.display())))?;
                // The examples' lock file, renamed after the project.
                text.replace("\"wasmq-js-examples\"", &format!("{:?}", args.name))
            }
        };
        out.push((dir.join(path), text));
    }
    for (path, text) in &out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "Created {} ({} task `{}`, SDK from {}).\nNext: cd {} && {}; then see README.md",
        dir.display(),
        format!("{:?}", args.lang).to_lowercase(),
        args.name,
        sdk.display(),
        dir.display(),
        build_hint(args.lang, &sdk),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "resize-image", "v2-task"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Hello", "2fast", "-a", "a-", "a_b", "a b", "a.b", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_template_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::C] {
            for (path, source) in files(lang) {
                if let Template(text) = source {
                    let rest = text
                        .replace("{{name}}", "")
                        .replace("{{sdk}}", "")
                        .replace("{{wasm}}", "");
                    assert!(!rest.contains("{{"), "{lang:?} {path}");
                }
            }
        }
    }

    /// The packages' versions, the WIT's and the one the JavaScript README
    /// names its tarball with are the same.
    #[test]
    fn sdk_package_versions() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |path: &str| std::fs::read_to_string(repo.join(path)).unwrap();
        let version = format!("\"{SDK_VERSION}\"");
        assert!(read("wit/task.wit").contains(&format!("package wasmq:task@{SDK_VERSION};")));
        assert!(read("guest-sdk/js/package.json").contains(&format!("\"version\": {version}")));
        assert!(read("guest-sdk/python/pyproject.toml").contains(&format!("version = {version}")));
        assert!(
            include_str!("templates/js/README.md")
                .contains(&format!("wasmq-guest-{SDK_VERSION}.tgz"))
        );
    }
}
