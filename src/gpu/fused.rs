//! Linears that read one input (q, k and v; gate and up; as each family's `input_of` declares)
//! multiplied on a GPU as one product with their weights stacked, the outputs then split.
//! A GPU's matrix kernels fill the card better with one wide product than with several narrow
//! ones (grouped-query k and v are 8× narrower than q), but whether that outweighs the copy
//! that stacks the weights differs per card: `neuroal tune` times both per group and keeps the
//! faster for the adapter; `NEUROAL_FUSE=all|none` overrides it. Untuned, nothing is fused.
//! The CPU backends never fuse: their products, and so their masks, stay as they are.

use burn::tensor::DType;

use crate::bail;
use crate::io::error::Result;

/// The environment variable that fuses every group (`all`) or none (`none`).
pub const VAR: &str = "NEUROAL_FUSE";

/// A group of linears that read one input, by its stacked weight: the input size K and each
/// member's output size, in declared order. Written `KxN1+N2+…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    pub k: usize,
    pub ns: Vec<usize>,
}

impl Group {
    /// The stacked weight's output size.
    pub fn n(&self) -> usize {
        self.ns.iter().sum()
    }

    fn parse(text: &str, source: &str) -> Result<Group> {
        let form = || {
            crate::err!(
                "{source}: {text:?}: a group is KxN1+N2[+…], K the input size and N1, N2, … its linears' output sizes (e.g. 2048x2048+256+256)"
            )
        };
        let (k, ns) = text.trim().split_once(['x', '×']).ok_or_else(form)?;
        let size = |s: &str| s.trim().parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(form);
        let ns = ns.split('+').map(size).collect::<Result<Vec<_>>>()?;
        if ns.len() < 2 {
            return Err(form());
        }
        Ok(Group { k: size(k)?, ns })
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns: Vec<String> = self.ns.iter().map(|n| n.to_string()).collect();
        write!(f, "{}x{}", self.k, ns.join("+"))
    }
}

/// Per group, whether its products run fused: what `neuroal tune` measured, written
/// `GROUP=on|off,…` in the tuned file's `fuse DTYPE` line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules(pub Vec<(Group, bool)>);

impl Rules {
    pub fn parse(value: &str, source: &str) -> Result<Rules> {
        let mut rules = Vec::new();
        for rule in value.split(',').map(str::trim) {
            let (group, on) = match rule.rsplit_once('=') {
                Some((group, "on")) => (group, true),
                Some((group, "off")) => (group, false),
                _ => bail!("{source}: {rule:?}: a fusion rule is GROUP=on|off (e.g. 2048x2048+256+256=on)"),
            };
            rules.push((Group::parse(group, source)?, on));
        }
        Ok(Rules(rules))
    }

    /// `newer`'s groups, and this one's that `newer` does not name.
    pub fn updated_by(self, newer: Rules) -> Rules {
        Rules(crate::gpu::rules::merged(self.0, newer.0))
    }

    fn fuses(&self, group: &Group) -> bool {
        self.0.iter().any(|(g, on)| g == group && *on)
    }
}

impl std::fmt::Display for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<String> =
            self.0.iter().map(|(g, on)| format!("{g}={}", if *on { "on" } else { "off" })).collect();
        f.write_str(&rules.join(","))
    }
}

/// What one GPU fuses.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// `NEUROAL_FUSE`: every group or none.
    All(bool),
    /// The tuned file's rules per dtype.
    Tuned(Vec<(DType, Rules)>),
}

/// Reads `NEUROAL_FUSE` when a GPU is opened, else takes what `neuroal tune` kept; returns the
/// choice and what the device line says of it (`None`: nothing fused).
pub fn choose(tuned: &[(DType, Rules)]) -> Result<(Choice, Option<String>)> {
    let asked = std::env::var(VAR).unwrap_or_default();
    let choice = match asked.trim() {
        "" => Choice::Tuned(tuned.to_vec()),
        "all" => Choice::All(true),
        "none" => Choice::All(false),
        other => bail!("{VAR}={other}: expected all or none"),
    };
    let said = match &choice {
        Choice::All(true) => Some("fused products per shared input".into()),
        Choice::All(false) => None,
        Choice::Tuned(rules) => {
            let said: Vec<String> = rules
                .iter()
                .filter_map(|(dtype, r)| {
                    let on: Vec<String> = r.0.iter().filter(|(_, on)| *on).map(|(g, _)| g.to_string()).collect();
                    (!on.is_empty())
                        .then(|| format!("fused {} for {}", on.join(","), crate::gpu::tensor::dtype_name(*dtype)))
                })
                .collect();
            (!said.is_empty()).then(|| said.join(", "))
        }
    };
    Ok((choice, said))
}

impl Choice {
    /// Whether the group's products run as one, in `dtype`.
    pub fn fuses(&self, dtype: DType, group: &Group) -> bool {
        match self {
            Choice::All(on) => *on,
            Choice::Tuned(rules) => rules.iter().any(|(d, r)| *d == dtype && r.fuses(group)),
        }
    }
}

/// Values of a block's weights stacked for its fused groups in `dtype` (none off a GPU: no
/// `choice`).
pub fn stacked_params(groups: &[Group], dtype: DType, choice: Option<&Choice>) -> u128 {
    let Some(choice) = choice else { return 0 };
    groups.iter().filter(|g| choice.fuses(dtype, g)).map(|g| (g.k * g.n()) as u128).sum()
}

/// `neuroal tune`'s verdict on a group, with the times it compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub fused: bool,
    /// The stacked product's milliseconds, and its members' together.
    pub stacked_ms: f64,
    pub apart_ms: f64,
}

/// The verdict for a group from the fastest time of each product `neuroal tune` measured
/// (milliseconds per weight shape [K, N], over the same token counts): fused when the stacked
/// product beats the members' products together by more than the 3% the stacking and the
/// split outputs' copies may cost; `None` where a time is missing.
pub fn verdict(group: &Group, ms: &dyn Fn([usize; 2]) -> Option<f64>) -> Option<Verdict> {
    let apart_ms: f64 = group.ns.iter().map(|&n| ms([group.k, n])).sum::<Option<f64>>()?;
    let stacked_ms = ms([group.k, group.n()])?;
    Some(Verdict { fused: stacked_ms < 0.97 * apart_ms, stacked_ms, apart_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_and_bad_ones_get_one_line() {
        let r = Rules::parse("2048x2048+256+256=on, 2048×5632+5632=off", "t").unwrap();
        assert_eq!(r.0[0], (Group { k: 2048, ns: vec![2048, 256, 256] }, true));
        assert_eq!(r.to_string(), "2048x2048+256+256=on,2048x5632+5632=off");
        assert!(r.fuses(&Group { k: 2048, ns: vec![2048, 256, 256] }));
        assert!(!r.fuses(&Group { k: 2048, ns: vec![5632, 5632] }), "measured off");
        assert!(!r.fuses(&Group { k: 4096, ns: vec![4096, 4096, 4096] }), "not measured");
        for (bad, says) in [
            ("2048x2048+256", "=on|off"),
            ("2048x2048=on", "a group is KxN1+N2"),
            ("2048x2048+0=on", "a group is KxN1+N2"),
            ("2048+256=on", "a group is KxN1+N2"),
            ("2048x256+a=off", "a group is KxN1+N2"),
            ("2048x256+256=yes", "=on|off"),
        ] {
            let e = Rules::parse(bad, "t").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
        let newer = Rules::parse("2048x5632+5632=on,64x64+16+16=off", "t").unwrap();
        assert_eq!(r.updated_by(newer).to_string(), "64x64+16+16=off,2048x2048+256+256=on,2048x5632+5632=on");
    }

    #[test]
    fn a_group_fuses_where_its_stacked_product_is_faster_by_more_than_three_percent() {
        let g = Group { k: 64, ns: vec![32, 16, 16] };
        let times =
            |fused: f64| move |[k, n]: [usize; 2]| (k == 64).then_some(if n == 64 { fused } else { n as f64 / 16.0 });
        // Apart: 2 + 1 + 1 = 4 ms.
        let fused = |fused_ms: f64| verdict(&g, &times(fused_ms)).map(|v| v.fused);
        assert_eq!(fused(3.8), Some(true));
        assert_eq!(fused(3.9), Some(false), "within 3%");
        assert_eq!(fused(5.0), Some(false));
        assert_eq!(verdict(&g, &times(3.8)), Some(Verdict { fused: true, stacked_ms: 3.8, apart_ms: 4.0 }));
        assert_eq!(verdict(&g, &|_| None), None);
    }
}
