//! What the kernel choices' rule lists (matrix products per weight shape, attention per head
//! size, fusion per group) share.

/// A tuned file's rules after a newer tune: `newer`'s, and `older`'s for the keys (weight
/// shapes, head sizes, groups) `newer` does not name; in key order.
pub fn merged<K: Ord, V: Ord>(older: Vec<(K, V)>, newer: Vec<(K, V)>) -> Vec<(K, V)> {
    let mut rules = newer;
    for (key, value) in older {
        if !rules.iter().any(|(k, _)| *k == key) {
            rules.push((key, value));
        }
    }
    rules.sort();
    rules
}
