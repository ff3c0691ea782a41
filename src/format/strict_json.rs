//! A checking pass over the header JSON that builds nothing: it rejects an object that repeats a
//! key, and a header whose `model`, `provenance`, sections or parts are not objects (R9). A plain
//! parser keeps the last of two equal keys while other languages' parsers may keep the first, and
//! serde's derived structs also take arrays of field values; two readers must never see different
//! headers in the same bytes. The header is then deserialized once, straight into its types.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// What the value at a position of the header must be.
#[derive(Clone, Copy)]
enum Expect {
    /// Anything (objects still need unique keys).
    Any,
    /// The header object itself.
    Header,
    /// An object with no further shape rules (`model`, `provenance`, each part).
    Object,
    /// The `sections` array: objects.
    Sections,
    /// One section object: its `parts` is an array of objects.
    Section,
    /// A `parts` array: objects.
    Parts,
}

impl Expect {
    /// What a member named `key` of an object of this kind must be.
    fn member(self, key: &str) -> Expect {
        match (self, key) {
            (Expect::Header, "model" | "provenance" | "embedding") => Expect::Object,
            (Expect::Header, "sections") => Expect::Sections,
            (Expect::Section, "parts") => Expect::Parts,
            _ => Expect::Any,
        }
    }
    /// What an element of an array of this kind must be.
    fn element(self) -> Expect {
        match self {
            Expect::Sections => Expect::Section,
            Expect::Parts => Expect::Object,
            _ => Expect::Any,
        }
    }
    fn wants_object(self) -> bool {
        matches!(self, Expect::Header | Expect::Object | Expect::Section)
    }
    fn wants_array(self) -> bool {
        matches!(self, Expect::Sections | Expect::Parts)
    }
    fn name(self) -> &'static str {
        match self {
            Expect::Any => "a JSON value",
            Expect::Header => "the header object",
            Expect::Object => "a JSON object",
            Expect::Sections => "an array of section objects",
            Expect::Section => "a section object",
            Expect::Parts => "an array of part objects",
        }
    }
}

struct Check(Expect);

impl Check {
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.0.wants_object() || self.0.wants_array() {
            return Err(E::custom(format!("expected {}", self.0.name())));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.name())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.0.wants_object() {
            return Err(de::Error::custom(format!("expected {}", self.0.name())));
        }
        let element = self.0.element();
        while seq.next_element_seed(Check(element))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.0.wants_array() {
            return Err(de::Error::custom(format!("expected {}", self.0.name())));
        }
        // Objects of the header are small (at most a dozen keys): a linear scan beats hashing.
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Check(self.0.member(&key)))?;
            keys.push(key);
        }
        Ok(())
    }
}

/// Checks `json` (already bounded in depth) against the rules above.
pub(crate) fn check(json: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    Check(Expect::Header).deserialize(&mut de)?;
    de.end()
}
