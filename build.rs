//! Without the `extension-module` feature (`cargo test`, the fuzz target) the library
//! links libpython, and the test binaries need to find it at run time: an rpath to the
//! build interpreter's library directory. The extension module in the wheel links no
//! libpython and gets no rpath; the interpreter that loads it provides CPython.

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    if std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some() {
        return;
    }
    let config = pyo3_build_config::get();
    if let (Some(dir), true) = (&config.lib_dir, config.shared) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
