//! The `fsm_events` fuzz property on stable: its committed seed corpus,
//! then random byte strings under proptest.

use proptest::prelude::*;

#[test]
fn seeds_hold() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/fsm_events");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let moved = vrrp_fsm::fuzzing::fsm_events_transitions(
            std::time::Instant::now(),
            &std::fs::read(&path).unwrap(),
        );
        assert!(
            moved > 0,
            "{} never reaches the state machine",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 5, "seed corpus has {n} files");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random inputs: the property holds (no panic, invariants kept).
    #[test]
    fn random_inputs_hold(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        vrrp_fsm::fuzzing::fsm_events(std::time::Instant::now(), &data);
    }

    /// Random inputs built from valid operations, so that most bytes reach
    /// the state machine rather than the end of input.
    #[test]
    fn random_operations_hold(
        head in proptest::collection::vec(any::<u8>(), 3..=3),
        ops in proptest::collection::vec(
            (0u8..16, 0u8..16, any::<u16>(), any::<[u8; 3]>()), 0..64),
    ) {
        let mut data = head;
        for (kind, scale, dt, args) in ops {
            data.push(kind | (scale << 4));
            data.extend_from_slice(&dt.to_be_bytes());
            let n = match kind { 0 => 0, 1..=4 => 3, 5 => 0, _ => 1 };
            data.extend_from_slice(&args[..n]);
            if kind == 5 {
                data.push(0);
            }
        }
        vrrp_fsm::fuzzing::fsm_events(std::time::Instant::now(), &data);
    }
}
