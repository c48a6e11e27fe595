//! The parts of `event.data` that expressions read, at any depth: what a JSON body
//! is built into, so that the rest is read past instead of being built (allocated,
//! hashed, and in a macro copied once per element) on every event.
//!
//! `event.data.total` reads `total` whole; `event.data.items.map(i, i.sku)` reads the
//! `sku` of each element of `items`; `has(event.data.coupon)` only needs `coupon` to
//! be there. Anything that may observe more of a value (comparing it, its size, `in`,
//! iterating an object's keys, a computed index, putting it in a list or a map,
//! returning it) reads it whole. Recorded by [`crate::check`], applied by
//! [`crate::json::parse`].

use std::fmt;

/// One step from a value into a part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// An object's key.
    Key(String),
    /// Any element of a list.
    Element,
}

/// What of a value is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Projection {
    /// All of it, at every depth.
    whole: bool,
    /// The keys of an object read, each with what of its value is read; the others
    /// are left out.
    keys: Vec<(String, Projection)>,
    /// What of each element of a list is read. An object whose elements are read
    /// (its keys iterated) is built whole.
    elements: Option<Box<Projection>>,
}

/// Nothing of a value is read but that it is there: an object is built without keys,
/// a list with elements built the same way.
static PRESENCE: Projection = Projection {
    whole: false,
    keys: Vec::new(),
    elements: None,
};

impl Projection {
    /// Everything.
    pub fn whole() -> Projection {
        Projection {
            whole: true,
            ..Projection::default()
        }
    }

    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// Records that the part at `path` is read: whole, or only its presence.
    pub(crate) fn read(&mut self, path: &[Step], whole: bool) {
        let Some((step, rest)) = path.split_first() else {
            self.whole |= whole;
            return;
        };
        let next = match step {
            Step::Key(key) => match self.keys.iter().position(|(k, _)| k == key) {
                Some(i) => &mut self.keys[i].1,
                None => {
                    self.keys.push((key.clone(), Projection::default()));
                    &mut self.keys.last_mut().expect("just pushed").1
                }
            },
            Step::Element => self.elements.get_or_insert_default(),
        };
        next.read(rest, whole);
    }

    /// Adds what `other` reads.
    pub fn union(&mut self, other: &Projection) {
        self.whole |= other.whole;
        for (key, part) in &other.keys {
            match self.keys.iter_mut().find(|(k, _)| k == key) {
                Some((_, mine)) => mine.union(part),
                None => self.keys.push((key.clone(), part.clone())),
            }
        }
        if let Some(elements) = &other.elements {
            self.elements.get_or_insert_default().union(elements);
        }
    }

    /// For an object: the keys to build, each with what of its value; `None` when
    /// all of it is built.
    pub(crate) fn object(&self) -> Option<&[(String, Projection)]> {
        (!self.whole && self.elements.is_none()).then_some(self.keys.as_slice())
    }

    /// For a list: what of each element is built; `None` when all of it.
    pub(crate) fn element(&self) -> Option<&Projection> {
        if self.whole {
            return None;
        }
        let element = self.elements.as_deref().unwrap_or(&PRESENCE);
        (!element.whole).then_some(element)
    }

    /// Every path read, as `total`, `items[].sku`, `coupon?` (only its presence).
    fn paths(&self, prefix: &str, out: &mut Vec<String>) {
        if self.whole {
            out.push(prefix.to_string());
            return;
        }
        if self.keys.is_empty() && self.elements.is_none() {
            out.push(format!("{prefix}?"));
            return;
        }
        for (key, part) in &self.keys {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            part.paths(&path, out);
        }
        if let Some(elements) = &self.elements {
            elements.paths(&format!("{prefix}[]"), out);
        }
    }
}

/// The paths read, comma-separated: `total, items[].sku, coupon?`; `*` for the whole.
impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.whole {
            return f.write_str("*");
        }
        let mut paths = Vec::new();
        self.paths("", &mut paths);
        f.write_str(&paths.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    #[test]
    fn reads_add_up_and_a_whole_read_covers_the_parts_below_it() {
        let mut p = Projection::default();
        p.read(&[key("total")], true);
        p.read(&[key("items"), Step::Element, key("sku")], true);
        p.read(&[key("coupon")], false);
        assert_eq!(p.to_string(), "total, items[].sku, coupon?");
        p.read(&[key("items")], true);
        assert_eq!(p.to_string(), "total, items, coupon?");
        assert_eq!(p.object().map(<[_]>::len), Some(3));
        p.read(&[], true);
        assert_eq!(p.to_string(), "*");
        assert_eq!(p.object(), None);
    }

    #[test]
    fn an_object_whose_elements_are_read_is_built_whole() {
        let mut p = Projection::default();
        p.read(&[Step::Element], false);
        assert_eq!(p.object(), None, "its keys are iterated");
        assert_eq!(p.element(), Some(&PRESENCE));
    }

    #[test]
    fn a_union_keeps_what_either_reads() {
        let mut a = Projection::default();
        a.read(&[key("items"), Step::Element, key("sku")], true);
        let mut b = Projection::default();
        b.read(&[key("items"), Step::Element, key("qty")], true);
        b.read(&[key("id")], true);
        a.union(&b);
        assert_eq!(a.to_string(), "items[].sku, items[].qty, id");
        a.union(&Projection::whole());
        assert!(a.is_whole());
    }
}
