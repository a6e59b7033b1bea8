//! Links the embedded CPython so that a fresh build runs without LD_LIBRARY_PATH or
//! PYTHONHOME: an rpath to libpython's directory, and the build interpreter's
//! executable and version baked in for `python::initialize`.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let executable = config.executable.clone().unwrap_or_default();
    println!("cargo:rustc-env=RGUN_PYTHON_EXECUTABLE={executable}");
    println!(
        "cargo:rustc-env=RGUN_PYTHON_VERSION={}.{}",
        config.version.major, config.version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
