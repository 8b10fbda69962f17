//! Links `scubactl` as a position-dependent executable on Linux. The binary
//! carries DataFusion (over 100 MB of code); as a PIE, the dynamic loader
//! applied about 223,000 relocations at every start, which was most of the
//! time a short command such as `scubactl query` took. The cost: the
//! executable's own code is not at a random address (shared libraries,
//! heap and stack still are).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
