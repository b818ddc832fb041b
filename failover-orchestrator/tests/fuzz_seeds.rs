//! Replays the `orchestrator_inputs` seed corpus (`fuzz/seeds/`) on stable,
//! and a few hundred random inputs through the same property.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use failover_orchestrator::fuzzing::orchestrator_inputs;
use proptest::prelude::*;

#[test]
fn seed_corpus_holds_the_property() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/seeds/orchestrator_inputs"
    );
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        orchestrator_inputs(Instant::now(), &data);
        n += 1;
    }
    assert!(n >= 8, "seed corpus missing ({n} files)");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_hold_the_property(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        orchestrator_inputs(Instant::now(), &data);
    }
}
