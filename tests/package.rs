//! The Debian package: built with cargo-deb from the tree (the binary of this test build,
//! so the test needs no release build), then opened with dpkg-deb and checked: files,
//! modes, conffiles, dependencies, the unit, and maintainer scripts that parse and do
//! what the README says.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_amd64_package_holds_what_the_readme_says() {
    let have_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have_cargo_deb,
        "cargo-deb is needed (.ci/run installs it: cargo install cargo-deb --locked)"
    );
    let dir = tempfile::tempdir().unwrap();
    // The package's binary asset is target/release/tidegate; cargo-deb looks for it in
    // the target directory cargo reports ($CARGO_TARGET_DIR), so this test's own binary
    // goes into one of its own.
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    // Stripped first: the test build's debug information is hundreds of MB to compress.
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(env!("CARGO_BIN_EXE_tidegate"))
        .arg(target.join("release/tidegate")));
    let deb = dir.path().join("tidegate.deb");
    run(Command::new("cargo")
        .current_dir(root())
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(&deb));

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    eprintln!("{info}\n{contents}");
    let packaged_size = std::fs::metadata(target.join("release/tidegate"))
        .unwrap()
        .len();
    eprintln!("binary packaged: {packaged_size} bytes");
    assert!(info.contains("Package: tidegate"));
    assert!(info.contains("Architecture: amd64"));
    assert!(info.contains("adduser"), "depends on adduser: {info}");
    assert!(info.contains("libc6"), "depends on libc: {info}");
    let mode_of = |path: &str| -> String {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} is in the package:\n{contents}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(mode_of("/usr/bin/tidegate"), "-rwxr-xr-x");
    assert_eq!(mode_of("/etc/tidegate/tidegate.toml"), "-rw-r-----");
    assert_eq!(
        mode_of("/usr/lib/systemd/system/tidegate.service"),
        "-rw-r--r--"
    );
    mode_of("/usr/share/doc/tidegate/README.md");
    mode_of("/usr/share/doc/tidegate/copyright");
    mode_of("/usr/share/doc/tidegate/examples/demo.toml");
    mode_of("/usr/share/tidegate/models/pump-demo.onnx");

    let control = dir.path().join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/tidegate/tidegate.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    for (name, script) in [("postinst", &postinst), ("postrm", &postrm)] {
        let path = control.join(name);
        run(Command::new("sh").arg("-n").arg(&path));
        assert!(script.starts_with("#!/bin/sh"), "{name}");
        assert!(
            !script.contains("#DEBHELPER#"),
            "{name}: the token is filled in"
        );
        assert!(
            !script.contains(">/etc/tidegate") && !script.contains("> /etc/tidegate"),
            "{name}: writes no file (no secret) into /etc/tidegate"
        );
    }
    assert!(
        postinst.contains("adduser --system"),
        "makes the system user"
    );
    assert!(postinst.contains("install -d -o tidegate -g tidegate -m 0750 /var/lib/tidegate"));
    assert!(
        !postinst.contains("systemctl start") && !postinst.contains("deb-systemd-invoke start"),
        "not started on install:\n{postinst}"
    );
    assert!(postrm.contains("purge") && postrm.contains("rm -rf /var/lib/tidegate"));

    // The unit in the package is the one in the tree.
    let unpacked = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    assert_eq!(
        std::fs::read_to_string(unpacked.join("usr/lib/systemd/system/tidegate.service")).unwrap(),
        std::fs::read_to_string(root().join("systemd/tidegate.service")).unwrap()
    );
    assert_eq!(
        std::fs::read(unpacked.join("etc/tidegate/tidegate.toml")).unwrap(),
        std::fs::read(root().join("config/tidegate.toml")).unwrap()
    );
    // The packaged binary checks the packaged reference config as far as it can here.
    let check = Command::new(unpacked.join("usr/bin/tidegate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains(env!("CARGO_PKG_VERSION")));
}
