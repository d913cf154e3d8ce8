//! The settings a user picks by name (`--method wanda`, `--device gpu`): each type lists its
//! values and their names once, and the command line offers exactly those.

pub trait Named: Copy + Send + Sync + 'static {
    /// Every value, in the order the help lists them.
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    /// The value called `name`, if any.
    fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }

    /// Every value's name.
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name()).collect()
    }
}
