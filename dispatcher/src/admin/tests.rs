//! The admin service's pure parts: which dead letters are a consumer's, what a redrive covers, where a replay
//! goes.

use super::*;

#[test]
fn a_letter_is_the_consumers_own_unless_another_uid_kept_it() {
    let mut event = sluice_cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
        .expect("valid");
    assert!(letter_is_ours(&event, "u2"), "kept before uids were written: cannot tell");
    event.attributes.insert(CONSUMER_UID_ATTRIBUTE.into(), AttrValue::String("u1".into()));
    assert!(letter_is_ours(&event, "u1"));
    assert!(!letter_is_ours(&event, "u2"), "an earlier consumer of the name");
    assert!(!strip_error_attributes(&event).attributes.contains_key(CONSUMER_UID_ATTRIBUTE), "not redriven with it");
}

#[test]
fn selected_letters_a_redrive_does_not_cover_are_named() {
    // Partition 0 holds letters 3..5 (0..3 redriven before), partition 1 none.
    let extents = [(0, 3, 5), (1, 0, 0)];
    let selected: HashSet<(u32, u64)> = [(0, 3), (0, 4)].into_iter().collect();
    assert_eq!(missing_letters(&selected, &extents), []);
    let selected: HashSet<(u32, u64)> = [(0, 7), (0, 3), (1, 0), (9, 1), (0, 1)].into_iter().collect();
    assert_eq!(missing_letters(&selected, &extents), [(0, 1), (0, 7), (1, 0), (9, 1)]);
    assert_eq!(missing_letters(&HashSet::new(), &extents), [], "none selected: all of them");
}

#[test]
fn a_replay_goes_into_what_the_partition_holds() {
    // (asked, start, end, to)
    let table = [
        (5, 0, 10, 5),
        (0, 9, 12, 9), // below what retention kept: the start
        (2, 9, 12, 9),
        (100, 0, 11, 11), // past the end: the end
        (9, 9, 9, 9),     // an empty partition, all trimmed
        (3, 0, 0, 0),
    ];
    for (asked, start, end, to) in table {
        assert_eq!(replay_offset(asked, start, end), to, "asked {asked} of [{start}, {end})");
    }
}
