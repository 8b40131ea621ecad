//! The Dockerfile (docker cannot build here): the build is CI's (toolchain, --locked), the
//! cached dependency layer reproduces the workspace, the runtime image has what the binaries
//! link and runs them as a non-root user with the ports compose uses.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clickstream_deploy::compose::scalar;
use clickstream_deploy::dockerfile::Dockerfile;
use clickstream_testkit::{TempDir, repo_root};

use crate::{binary, compose, read};

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&read("Dockerfile"))
}

/// `rust:1.95.0-slim-bookworm` → ("1.95.0", "bookworm").
fn rust_image(image: &str) -> (String, String) {
    let tag = image.strip_prefix("rust:").expect("a rust: image");
    let version = tag.split('-').next().unwrap_or_default().to_owned();
    let codename = tag.rsplit('-').next().unwrap_or_default().to_owned();
    (version, codename)
}

#[test]
fn the_build_uses_the_pinned_toolchain_and_the_runtime_its_debian() {
    let file = dockerfile();
    let toolchain: toml_channel::Channel = toml_channel::read();
    let builders: Vec<&str> = file
        .stages
        .iter()
        .map(|s| s.image.as_str())
        .filter(|i| i.starts_with("rust:"))
        .collect();
    assert_eq!(builders.len(), 1, "one builder image: {builders:?}");
    let (version, codename) = rust_image(builders[0]);
    assert_eq!(version, toolchain.0, "rust image vs rust-toolchain.toml");
    // The binaries link the builder's glibc: the runtime must be the same Debian release.
    let runtime = file.stage("runtime").expect("a runtime stage");
    assert_eq!(
        file.stages[runtime].image,
        format!("debian:{codename}-slim"),
        "runtime image"
    );
}

/// Reads the channel of rust-toolchain.toml without a TOML dependency (one `channel = "..."`).
mod toml_channel {
    pub struct Channel(pub String);

    pub fn read() -> Channel {
        let text = crate::read("rust-toolchain.toml");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("channel"))
            .expect("channel in rust-toolchain.toml");
        Channel(line.split('"').nth(1).expect("quoted channel").to_owned())
    }
}

#[test]
fn cargo_builds_locked_release_like_ci() {
    let file = dockerfile();
    let builds: Vec<&str> = file
        .with_keyword("RUN")
        .filter(|i| i.args.contains("cargo build"))
        .map(|i| i.args.as_str())
        .collect();
    assert_eq!(
        builds.len(),
        2,
        "dependency layer, then the code: {builds:?}"
    );
    let packages = |command: &str| -> BTreeSet<String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "-p")
            .map(|w| w[1].to_owned())
            .collect()
    };
    for command in &builds {
        assert!(command.contains("--locked"), "{command}");
        assert!(command.contains("--release"), "{command}");
    }
    assert_eq!(packages(builds[0]), packages(builds[1]));
    assert_eq!(
        packages(builds[0]),
        BTreeSet::from([
            "clickstream-producer".into(),
            "clickstream-sink".into(),
            "clickstream-windows".into()
        ])
    );
    // CI (scripts/test) builds and tests with the lockfile as it is, too.
    let ci = read("scripts/test");
    let invocations: Vec<&str> = ci
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains("cargo clippy --") || l.contains("cargo test --"))
        .collect();
    assert!(invocations.len() >= 2, "{invocations:?}");
    for line in invocations {
        assert!(line.contains("--locked"), "scripts/test: {line}");
    }
    assert!(read(".ci/run").contains("scripts/test"));
    // The dependency layer is built before the sources are copied in.
    let build = file.stage("build").expect("build stage");
    let steps: Vec<String> = file
        .lineage(build)
        .iter()
        .filter(|i| i.stage == build)
        .map(|i| format!("{} {}", i.keyword, i.args))
        .collect();
    let copy_all = steps
        .iter()
        .position(|s| s == "COPY . .")
        .expect("COPY . .");
    let first_build = steps
        .iter()
        .position(|s| s.contains("cargo build"))
        .unwrap();
    assert!(first_build < copy_all, "{steps:#?}");
    assert!(
        steps[first_build - 1].starts_with("COPY --from=skeleton"),
        "{steps:#?}"
    );
    assert!(
        steps[copy_all + 1].contains("touch"),
        "stale mtimes: {steps:#?}"
    );
}

/// `cargo metadata --no-deps` of a workspace: package → its lib/bin targets (kind, name).
fn targets(manifest_dir: &std::path::Path) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(manifest_dir)
        .args([
            "metadata",
            "--no-deps",
            "--locked",
            "--offline",
            "--format-version",
            "1",
        ])
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata in {}: {}",
        manifest_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let text = |value: &serde_json::Value| value.as_str().expect("a string").to_owned();
    let list = |value: &serde_json::Value| value.as_array().cloned().expect("a list");
    let mut out = BTreeMap::new();
    for package in list(&metadata["packages"]) {
        let mut set = BTreeSet::new();
        for target in list(&package["targets"]) {
            for kind in list(&target["kind"]) {
                let kind = text(&kind);
                if matches!(kind.as_str(), "lib" | "bin" | "custom-build") {
                    let src = text(&target["src_path"]);
                    assert!(
                        std::path::Path::new(&src).exists(),
                        "{src} missing in {}",
                        manifest_dir.display()
                    );
                    set.insert((kind, text(&target["name"])));
                }
            }
        }
        out.insert(text(&package["name"]), set);
    }
    out
}

#[test]
fn the_dependency_layer_reproduces_the_workspace() {
    let dest = TempDir::new("cargo_skeleton");
    let skeleton = dest.path().join("skeleton");
    let status = Command::new(repo_root().join("deploy/cargo-skeleton.sh"))
        .arg(repo_root())
        .arg(&skeleton)
        .status()
        .expect("run deploy/cargo-skeleton.sh");
    assert!(status.success());
    // Only manifests, the lockfile and stubs: no real code leaks into the cached layer.
    let mut files = Vec::new();
    let mut stack = vec![skeleton.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        if name.ends_with(".rs") && name != "build.rs" {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(
                text.len() <= "fn main() {}\n".len(),
                "{}: {text}",
                file.display()
            );
        } else {
            assert!(
                matches!(name, "Cargo.toml" | "Cargo.lock" | "build.rs"),
                "{}",
                file.display()
            );
        }
    }
    assert_eq!(
        std::fs::read(skeleton.join("Cargo.lock")).unwrap(),
        std::fs::read(repo_root().join("Cargo.lock")).unwrap()
    );
    // Same packages and lib/bin targets as the real workspace, every one with its source file,
    // and the lockfile fits it as it is (--locked).
    assert_eq!(targets(&skeleton), targets(&repo_root()));
}

#[test]
fn the_runtime_installs_what_the_binaries_link() {
    let file = dockerfile();
    let runtime = file.stage("runtime").expect("runtime stage");
    let installs: String = file
        .lineage(runtime)
        .iter()
        .filter(|i| i.stage == runtime && i.keyword == "RUN")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    let installed: BTreeSet<&str> = installs
        .split("apt-get install")
        .skip(1)
        .flat_map(|rest| rest.split("&&").next().unwrap_or("").split_whitespace())
        .filter(|w| !w.starts_with('-'))
        .collect();
    // Which Debian package provides each library; `None`: in every debian:*-slim already.
    let provider = |library: &str| -> Option<Option<&str>> {
        Some(match library {
            "libssl.so.3" | "libcrypto.so.3" => Some("libssl3"),
            "libz.so.1" => None,
            "libc.so.6"
            | "libm.so.6"
            | "libpthread.so.0"
            | "libdl.so.2"
            | "librt.so.1"
            | "ld-linux-x86-64.so.2"
            | "ld-linux-aarch64.so.1" => None,
            "libgcc_s.so.1" => None,
            _ => return None,
        })
    };
    for name in [
        "clickstream-producer",
        "clickstream-sink",
        "clickstream-windows",
    ] {
        let output = Command::new("readelf")
            .arg("-d")
            .arg(binary(name))
            .output()
            .expect("readelf (binutils)");
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        let needed: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        assert!(needed.contains(&"libc.so.6"), "{text}");
        for library in needed {
            match provider(library) {
                Some(Some(package)) => assert!(
                    installed.contains(package),
                    "{name} links {library}: install {package} in the runtime stage ({installed:?})"
                ),
                Some(None) => {}
                None => panic!("{name} links {library}: which runtime package provides it?"),
            }
        }
    }
    assert!(
        installed.contains("ca-certificates"),
        "TLS needs CA certificates"
    );
}

#[test]
fn the_images_run_their_binary_as_non_root_on_the_compose_ports() {
    let file = dockerfile();
    let compose = compose();
    let runtime = file.stage("runtime").unwrap();
    let runtime_steps = file.lineage(runtime);
    assert!(
        runtime_steps
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("useradd")),
        "no user created"
    );
    for (service, binary) in [
        ("producer", "clickstream-producer"),
        ("sink", "clickstream-sink"),
        ("windows", "clickstream-windows"),
    ] {
        let stage = file.stage(service).expect("target stage");
        let steps = file.lineage(stage);
        let user = steps
            .iter()
            .rev()
            .find(|i| i.keyword == "USER")
            .map(|i| i.args.as_str())
            .unwrap_or("root");
        assert!(
            !matches!(user, "root" | "0" | "0:0"),
            "{service} runs as {user}"
        );
        let entrypoint = steps
            .iter()
            .rev()
            .find(|i| i.keyword == "ENTRYPOINT")
            .expect("ENTRYPOINT");
        assert_eq!(entrypoint.args, format!("[\"{binary}\"]"), "{service}");
        // The binary and the probe are copied in, from places that exist.
        assert!(
            steps.iter().any(
                |i| i.keyword == "COPY" && i.args.contains(&format!("target/release/{binary}"))
            ),
            "{service}: {binary} not copied"
        );
        let exposed: BTreeSet<u16> = steps
            .iter()
            .filter(|i| i.keyword == "EXPOSE")
            .flat_map(|i| i.args.split_whitespace().map(|p| p.parse().expect("port")))
            .collect();
        let published: BTreeSet<u16> = compose
            .ports(service)
            .unwrap()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(exposed, published, "{service}");
        let probe = scalar(&compose.service(service)["healthcheck"]["test"][1]).unwrap();
        assert_eq!(probe, "http-ok");
    }
    for copy in file
        .with_keyword("COPY")
        .filter(|i| !i.args.starts_with("--from"))
    {
        let source = copy.args.split_whitespace().next().unwrap();
        assert!(repo_root().join(source).exists(), "COPY {source}: missing");
    }
    assert!(
        file.with_keyword("COPY")
            .any(|i| i.args == "deploy/http-ok /usr/local/bin/http-ok")
    );
    // The build context leaves build output and local state out.
    let ignore = read(".dockerignore");
    for entry in ["target/", ".stack/", ".git/"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), "{entry}");
    }
}
