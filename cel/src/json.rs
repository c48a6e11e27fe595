//! A JSON document straight into CEL values, in one pass: strings without escapes
//! borrow from the body instead of being copied, and the longest list or object is
//! measured on the way for the cost estimate.
//!
//! Numbers: an integer is an `int` (a `uint` only beyond the int range), anything
//! with a fraction or an exponent a `double`. CEL's own JSON mapping makes every
//! number a double, which would make `event.data.quantity * 2` an error.

use std::collections::HashMap;
use std::fmt;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::projection::Projection;

pub(crate) type Object<'a> = HashMap<CelMapKey<'a>, Box<dyn Val + 'a>>;

/// Entries an object has room for before its first key, when the reader cannot tell
/// (serde_json never can): a map that grows rehashes every key it holds (with
/// SipHash, which cel's maps use), and most objects in events are this small.
const OBJECT_ROOM: usize = 7;

/// The elements of the longest list or object seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Longest(pub usize);

/// `body` as one CEL value, with only the parts `read`: the values of keys left
/// out are read past (checked as JSON) without being built. The longest list or
/// object built is added to `longest`.
pub(crate) fn parse<'a>(
    body: &'a [u8],
    read: &Projection,
    longest: &mut Longest,
) -> Result<Box<dyn Val + 'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = (&mut de).deserialize_any(ValueVisitor {
        longest,
        keep: (!read.is_whole()).then_some(read),
    })?;
    de.end()?;
    Ok(value)
}

/// `body` as a JSON object's entries, or `None` when it is valid JSON of another kind.
pub(crate) fn parse_object<'a>(
    body: &'a [u8],
    longest: &mut Longest,
) -> Result<Option<Object<'a>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let object = (&mut de).deserialize_any(TopVisitor { longest })?;
    de.end()?;
    Ok(object)
}

struct ValueSeed<'s> {
    longest: &'s mut Longest,
    keep: Option<&'s Projection>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Box<dyn Val + 'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ValueVisitor {
            longest: self.longest,
            keep: self.keep,
        })
    }
}

struct ValueVisitor<'s> {
    longest: &'s mut Longest,
    /// The parts to build (see [`parse`]); `None`: all of it.
    keep: Option<&'s Projection>,
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Box<dyn Val + 'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelInt::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(int) => Box::new(CelInt::from(int)),
            Err(_) => Box::new(CelUInt::from(v)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        let keep = self.keep.and_then(Projection::element);
        while let Some(item) = seq.next_element_seed(ValueSeed {
            longest: self.longest,
            keep,
        })? {
            items.push(item);
        }
        self.longest.0 = self.longest.0.max(items.len());
        Ok(Box::new(CelList::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Box::new(CelMap::from(entries(
            map,
            self.keep.and_then(Projection::object),
            self.longest,
        )?)))
    }
}

/// The top level of a document that should be an object.
struct TopVisitor<'s> {
    longest: &'s mut Longest,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Option<Object<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        entries(map, None, self.longest).map(Some)
    }

    // Anything else is valid, just not an object: read and dropped.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        ValueVisitor {
            longest: self.longest,
            keep: None,
        }
        .visit_seq(seq)
        .map(|_| None)
    }
}

/// An object's entries; with `keep`, only those keys, each built as far as its
/// projection says (the others' values are read past, still checked as JSON).
fn entries<'de, A: MapAccess<'de>>(
    mut map: A,
    keep: Option<&[(String, Projection)]>,
    longest: &mut Longest,
) -> Result<Object<'de>, A::Error> {
    let room = match keep {
        Some(keys) => keys.len(),
        None => map.size_hint().unwrap_or(OBJECT_ROOM),
    };
    let mut entries = HashMap::with_capacity(room.min(1024));
    while let Some(key) = map.next_key_seed(KeySeed)? {
        let part = match keep {
            None => None,
            Some(keys) => match keys.iter().find(|(k, _)| k.as_str() == key.inner()) {
                Some((_, part)) => (!part.is_whole()).then_some(part),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            },
        };
        let value = map.next_value_seed(ValueSeed {
            longest: &mut *longest,
            keep: part,
        })?;
        // A repeated key: the last one wins, as in most JSON readers.
        entries.insert(CelMapKey::String(key), value);
    }
    longest.0 = longest.0.max(entries.len());
    Ok(entries)
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = CelString<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = CelString<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(CelString::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CelString::from(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(CelString::from(v))
    }
}

#[cfg(test)]
mod tests {
    use cel::common::types::Kind;

    use super::*;
    use crate::projection::Step;

    fn kind(v: &dyn Val) -> Kind {
        v.get_type().kind()
    }

    #[test]
    fn integers_are_ints_and_fractions_doubles() {
        let mut longest = Longest::default();
        let v = parse(
            br#"[1, -2, 1.5, 1e3, 18446744073709551615]"#,
            &Projection::whole(),
            &mut longest,
        )
        .unwrap();
        let list = v.downcast_ref::<CelList>().unwrap().inner();
        let kinds: Vec<Kind> = list.iter().map(|v| kind(v.as_ref())).collect();
        assert_eq!(
            kinds,
            [Kind::Int, Kind::Int, Kind::Double, Kind::Double, Kind::UInt]
        );
        assert_eq!(longest.0, 5);
    }

    #[test]
    fn the_longest_list_or_object_anywhere_is_measured() {
        let mut longest = Longest::default();
        parse(
            br#"{"a": {"b": [1, 2, 3, 4, 5, 6, 7]}, "c": 1}"#,
            &Projection::whole(),
            &mut longest,
        )
        .unwrap();
        assert_eq!(longest.0, 7);
    }

    #[test]
    fn plain_strings_borrow_from_the_body_and_escaped_ones_are_decoded() {
        let mut longest = Longest::default();
        let body = br#"{"plain": "abc", "escaped": "a\nb"}"#;
        let object = parse_object(body, &mut longest).unwrap().unwrap();
        let text = |k: &str| {
            object[&CelMapKey::from(k)]
                .downcast_ref::<CelString>()
                .unwrap()
                .inner()
                .to_string()
        };
        assert_eq!(text("plain"), "abc");
        assert_eq!(text("escaped"), "a\nb");
    }

    #[test]
    fn trailing_text_and_non_objects_are_told_apart() {
        let mut longest = Longest::default();
        assert!(parse(b"{} x", &Projection::whole(), &mut longest).is_err());
        assert!(parse(b"not json", &Projection::whole(), &mut longest).is_err());
        assert!(parse_object(b"[1]", &mut longest).unwrap().is_none());
        assert!(parse_object(b"\"s\"", &mut longest).unwrap().is_none());
    }

    fn read(paths: &[&[Step]]) -> Projection {
        let mut read = Projection::default();
        for path in paths {
            read.read(path, true);
        }
        read
    }

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    #[test]
    fn kept_keys_leave_the_others_out_but_still_check_them_as_json() {
        let keys = read(&[&[key("total")], &[key("missing")]]);
        let mut longest = Longest::default();
        let body = br#"{"total": 5, "items": [1, 2, 3, 4, 5, 6, 7, 8], "note": "a\nb"}"#;
        let v = parse(body, &keys, &mut longest).unwrap();
        let map = v.downcast_ref::<CelMap>().unwrap();
        assert_eq!(map.inner().len(), 1);
        assert!(map.inner().contains_key(&CelMapKey::from("total")));
        assert_eq!(longest.0, 1, "what was left out is not measured");
        // Invalid JSON in a value left out is still an error; a value that is not
        // an object is built whole.
        assert!(parse(br#"{"total": 5, "x": [1,}"#, &keys, &mut longest).is_err());
        let v = parse(br#"[1, 2]"#, &keys, &mut longest).unwrap();
        assert_eq!(v.downcast_ref::<CelList>().unwrap().inner().len(), 2);
    }

    #[test]
    fn nested_objects_and_list_elements_keep_only_what_is_read() {
        let body = br#"{"id": "o-1", "customer": {"tier": "gold", "name": "n", "address": {"city": "c"}}, "items": [{"sku": "a", "qty": 1, "note": "x"}, 7, [{"sku": "b"}]], "coupon": {"code": "c", "off": 5}}"#;
        let mut kept = read(&[
            &[key("customer"), key("tier")],
            &[key("items"), Step::Element, key("sku")],
        ]);
        kept.read(&[key("coupon")], false);
        let mut longest = Longest::default();
        let v = parse(body, &kept, &mut longest).unwrap();
        let json = crate::output::body(v.as_ref()).unwrap();
        assert_eq!(
            String::from_utf8(json.bytes).unwrap(),
            r#"{"coupon":{},"customer":{"tier":"gold"},"items":[{"sku":"a"},7,[{}]]}"#,
            "a list inside a list keeps only its elements' presence"
        );
        assert_eq!(longest.0, 3, "the list of items, whole in length");
        // An object whose elements are read has its keys iterated: it is whole.
        let v = parse(
            br#"{"a": 1, "b": {"c": 2}}"#,
            &read(&[&[Step::Element]]),
            &mut longest,
        )
        .unwrap();
        assert_eq!(v.downcast_ref::<CelMap>().unwrap().inner().len(), 2);
    }
}
