//! Replays the `vrrp_parse` fuzz target's seed corpus (`fuzz/seeds/vrrp_parse`)
//! through the same property the fuzzer checks, on stable.

use std::path::PathBuf;

#[test]
fn vrrp_parse_seed_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/vrrp_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus is in the repository") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        vrrp_proto::fuzzing::vrrp_parse(&data);
        n += 1;
    }
    assert!(n >= 30, "seed corpus has {n} files");
}
