//! UBIDs: typed, human-friendly ids for uuid primary keys.
//!
//! Every row id is a uuid; operators see it as 26 lowercase characters whose
//! first two name the type (`st` strand, `vm`, `vh` host, ...), so a pasted id
//! says what it is. The alphabet is Crockford's base32 (no `i`, `l`, `o`, `u`),
//! so ids survive being read aloud or retyped.
//!
//! Layout of the uuid (RFC 9562 version 8, "custom"):
//!
//! ```text
//! bits   0..48  unix milliseconds (time-ordered, so new ids land at the right edge of a btree)
//! bits  48..52  version = 8
//! bits  52..64  random
//! bits  64..66  variant = 0b10
//! bits  66..76  type (two base32 characters)
//! bits 76..128  random
//! ```
//!
//! The string is the 10 type bits, then time and randomness (112 bits), then an
//! 8-bit checksum: 130 bits, 26 characters. A mistyped character is caught by
//! the checksum rather than silently naming another row.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use uuid::Uuid;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
pub const UBID_LEN: usize = 26;

/// The kinds of rows that carry UBIDs. Adding one is adding a line here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UbidType {
    Strand,
    Page,
    Semaphore,
    Vm,
    VmHost,
    Sshable,
    Project,
    Event,
    Token,
    Subnet,
    Audit,
    Test,
}

impl UbidType {
    pub const ALL: &'static [UbidType] = &[
        UbidType::Strand,
        UbidType::Page,
        UbidType::Semaphore,
        UbidType::Vm,
        UbidType::VmHost,
        UbidType::Sshable,
        UbidType::Project,
        UbidType::Event,
        UbidType::Token,
        UbidType::Subnet,
        UbidType::Audit,
        UbidType::Test,
    ];

    pub const fn prefix(self) -> &'static str {
        match self {
            UbidType::Strand => "st",
            UbidType::Page => "pa",
            UbidType::Semaphore => "sm",
            UbidType::Vm => "vm",
            UbidType::VmHost => "vh",
            UbidType::Sshable => "sh",
            UbidType::Project => "pj",
            UbidType::Event => "ev",
            UbidType::Token => "tk",
            UbidType::Subnet => "ps",
            UbidType::Audit => "at",
            UbidType::Test => "te",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            UbidType::Strand => "strand",
            UbidType::Page => "page",
            UbidType::Semaphore => "semaphore",
            UbidType::Vm => "vm",
            UbidType::VmHost => "vm host",
            UbidType::Sshable => "sshable",
            UbidType::Project => "project",
            UbidType::Event => "event",
            UbidType::Token => "api token",
            UbidType::Subnet => "private subnet",
            UbidType::Audit => "operator audit record",
            UbidType::Test => "test row",
        }
    }

    pub fn from_prefix(prefix: &str) -> Option<UbidType> {
        UbidType::ALL.iter().copied().find(|t| t.prefix() == prefix)
    }

    fn bits(self) -> u128 {
        let p = self.prefix().as_bytes();
        (digit(p[0]).expect("prefix in alphabet") as u128) << 5 | digit(p[1]).expect("prefix in alphabet") as u128
    }
}

/// A uuid that knows how to print itself as a UBID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ubid(Uuid);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UbidError {
    #[error("a UBID is {UBID_LEN} characters, got {0} in {1:?}")]
    Length(usize, String),
    #[error("{0:?} is not a UBID character (in {1:?}; UBIDs use 0-9 and a-z without i, l, o, u{2})")]
    Character(char, String, &'static str),
    #[error("{0:?} is not a valid UBID: its checksum does not match (a character was mistyped?)")]
    Checksum(String),
    #[error("{0:?} starts with {1:?}, which is no known UBID type (known: {2})")]
    UnknownType(String, String, String),
    #[error("{0:?} is a {1} id, expected a {2} id")]
    WrongType(String, &'static str, &'static str),
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase()).map(|p| p as u8)
}

/// CRC-8 (polynomial 0x07) of the payload: it catches every error burst of up
/// to 8 bits, so every single mistyped character (5 bits) is detected.
fn checksum(payload: u128) -> u8 {
    let mut crc: u8 = 0;
    for byte in payload.to_be_bytes() {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { crc << 1 ^ 0x07 } else { crc << 1 };
        }
    }
    crc
}

impl Ubid {
    /// A new time-ordered id of the given type.
    pub fn generate(ty: UbidType) -> Ubid {
        let ms = ulid::Ulid::new().timestamp_ms() as u128 & ((1 << 48) - 1);
        let mut rng = rand::thread_rng();
        let rand_a = (rng.next_u32() & 0xfff) as u128;
        let rand_b = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) & ((1u128 << 52) - 1);
        Ubid::assemble(ty.bits(), ms, rand_a, rand_b)
    }

    fn assemble(ty: u128, ms: u128, rand_a: u128, rand_b: u128) -> Ubid {
        let v = ms << 80 | 0x8 << 76 | rand_a << 64 | 0b10 << 62 | ty << 52 | rand_b;
        Ubid(Uuid::from_u128(v))
    }

    /// Wrap a uuid read from the database. A uuid not made as a UBID (say, one
    /// inserted by hand) still works as an id; it just prints as a plain uuid.
    pub fn from_uuid(uuid: Uuid) -> Ubid {
        Ubid(uuid)
    }

    /// Whether this uuid has the UBID layout (version 8, our variant).
    pub fn is_ubid(self) -> bool {
        let v = self.0.as_u128();
        (v >> 76) & 0xf == 0x8 && (v >> 62) & 0b11 == 0b10
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }

    fn type_bits(self) -> u128 {
        (self.0.as_u128() >> 52) & 0x3ff
    }

    /// The row type, if the prefix is one this build knows.
    pub fn kind(self) -> Option<UbidType> {
        if !self.is_ubid() {
            return None;
        }
        UbidType::ALL.iter().copied().find(|t| t.bits() == self.type_bits())
    }

    /// When the id was generated (millisecond precision), if it is a UBID.
    pub fn created_at(self) -> Option<chrono::DateTime<chrono::Utc>> {
        let ms = (self.0.as_u128() >> 80) as i64;
        self.is_ubid().then(|| chrono::DateTime::from_timestamp_millis(ms)).flatten()
    }

    /// Parse and check that the id names the expected type of row.
    pub fn parse_as(s: &str, ty: UbidType) -> Result<Ubid, UbidError> {
        let id: Ubid = s.parse()?;
        match id.kind() {
            Some(t) if t == ty => Ok(id),
            Some(t) => Err(UbidError::WrongType(s.to_string(), t.describe(), ty.describe())),
            None => Err(UbidError::WrongType(s.to_string(), "plain uuid", ty.describe())),
        }
    }

    fn payload(self) -> u128 {
        let v = self.0.as_u128();
        let ms = v >> 80;
        let rand_a = (v >> 64) & 0xfff;
        let rand_b = v & ((1u128 << 52) - 1);
        self.type_bits() << 112 | ms << 64 | rand_a << 52 | rand_b
    }
}

impl fmt::Display for Ubid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_ubid() {
            return write!(f, "{}", self.0);
        }
        let payload = self.payload();
        // 122 payload bits then 8 checksum bits = 130 bits = 26 characters.
        let hi = payload >> 2; // top 120 bits
        let lo = ((payload & 0b11) << 8) | checksum(payload) as u128; // last 10 bits
        let mut out = [0u8; UBID_LEN];
        for (i, slot) in out.iter_mut().take(24).enumerate() {
            *slot = ALPHABET[((hi >> (115 - 5 * i)) & 31) as usize];
        }
        out[24] = ALPHABET[((lo >> 5) & 31) as usize];
        out[25] = ALPHABET[(lo & 31) as usize];
        f.write_str(std::str::from_utf8(&out).expect("alphabet is ascii"))
    }
}

impl fmt::Debug for Ubid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Ubid {
    type Err = UbidError;

    fn from_str(s: &str) -> Result<Ubid, UbidError> {
        let s = s.trim();
        if s.len() == 36 {
            if let Ok(uuid) = Uuid::parse_str(s) {
                return Ok(Ubid(uuid));
            }
        }
        if s.chars().count() != UBID_LEN {
            return Err(UbidError::Length(s.chars().count(), s.to_string()));
        }
        let mut bits: u128 = 0; // first 120 bits
        let mut tail: u128 = 0; // last 10 bits
        for (i, c) in s.chars().enumerate() {
            let d = u8::try_from(c).ok().and_then(digit).ok_or_else(|| {
                let hint = match c.to_ascii_lowercase() {
                    'o' => "; did you mean '0'?",
                    'i' | 'l' => "; did you mean '1'?",
                    _ => "",
                };
                UbidError::Character(c, s.to_string(), hint)
            })? as u128;
            if i < 24 {
                bits = bits << 5 | d;
            } else {
                tail = tail << 5 | d;
            }
        }
        let payload = bits << 2 | tail >> 8;
        if checksum(payload) != (tail & 0xff) as u8 {
            return Err(UbidError::Checksum(s.to_string()));
        }
        let prefix = s[..2].to_ascii_lowercase();
        if UbidType::from_prefix(&prefix).is_none() {
            let known: Vec<&str> = UbidType::ALL.iter().map(|t| t.prefix()).collect();
            return Err(UbidError::UnknownType(s.to_string(), prefix, known.join(", ")));
        }
        let ty = payload >> 112;
        let ms = (payload >> 64) & ((1 << 48) - 1);
        let rand_a = (payload >> 52) & 0xfff;
        let rand_b = payload & ((1u128 << 52) - 1);
        Ok(Ubid::assemble(ty, ms, rand_a, rand_b))
    }
}

impl From<Uuid> for Ubid {
    fn from(uuid: Uuid) -> Ubid {
        Ubid(uuid)
    }
}

impl From<Ubid> for Uuid {
    fn from(id: Ubid) -> Uuid {
        id.0
    }
}

impl serde::Serialize for Ubid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ubid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ubid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// Stored as a plain `uuid` column: the database never sees the string form.
impl sqlx::Type<sqlx::Postgres> for Ubid {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Uuid as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for Ubid {
    fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <Uuid as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Ubid {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Ubid, sqlx::error::BoxDynError> {
        Ok(Ubid(<Uuid as sqlx::Decode<sqlx::Postgres>>::decode(value)?))
    }
}

impl sqlx::postgres::PgHasArrayType for Ubid {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <Uuid as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r18_ubid_round_trips_through_string_uuid_and_serde() {
        for ty in UbidType::ALL {
            for _ in 0..200 {
                let id = Ubid::generate(*ty);
                let s = id.to_string();
                assert_eq!(s.len(), UBID_LEN);
                assert!(s.starts_with(ty.prefix()), "{s} should start with {}", ty.prefix());
                assert_eq!(s, s.to_lowercase());
                assert_eq!(s.parse::<Ubid>().unwrap(), id);
                assert_eq!(Ubid::from_uuid(id.uuid()), id);
                assert_eq!(id.kind(), Some(*ty));
                let json = serde_json::to_string(&id).unwrap();
                assert_eq!(serde_json::from_str::<Ubid>(&json).unwrap(), id);
            }
        }
    }

    #[test]
    fn r18_ubid_carries_time_and_sorts_by_it() {
        let a = Ubid::generate(UbidType::Strand);
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = Ubid::generate(UbidType::Strand);
        assert!(a.uuid() < b.uuid(), "later ids sort after earlier ones");
        let age = chrono::Utc::now() - a.created_at().unwrap();
        assert!(age.num_seconds().abs() < 5, "time part is now: {:?}", a.created_at());
    }

    #[test]
    fn r18_malformed_ubids_are_rejected_with_a_clear_message() {
        let good = Ubid::generate(UbidType::Vm).to_string();

        let err = "st123".parse::<Ubid>().unwrap_err();
        assert!(err.to_string().contains("26 characters"), "{err}");

        let with_o = format!("{}o", &good[..25]);
        let err = with_o.parse::<Ubid>().unwrap_err();
        assert!(err.to_string().contains("did you mean '0'"), "{err}");

        // Every single-character substitution is caught: by the checksum or the type.
        for pos in 0..UBID_LEN {
            let mut bytes = good.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'2' { b'3' } else { b'2' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(typo.parse::<Ubid>().is_err(), "typo at {pos} accepted: {typo}");
        }

        let err = Ubid::parse_as(&good, UbidType::Strand).unwrap_err();
        assert_eq!(err.to_string(), format!("{good:?} is a vm id, expected a strand id"));

        // A foreign uuid is still an id, printed and parsed as a plain uuid, of no type.
        let foreign = Ubid::from_uuid(Uuid::new_v4());
        assert_eq!(foreign.kind(), None);
        assert_eq!(foreign.to_string().parse::<Ubid>().unwrap(), foreign);
        assert!(Ubid::parse_as(&foreign.to_string(), UbidType::Strand).is_err());
        assert!(serde_json::from_str::<Ubid>("\"nope\"").is_err());
    }

    #[test]
    fn r18_uppercase_input_is_accepted() {
        let id = Ubid::generate(UbidType::Page);
        assert_eq!(id.to_string().to_uppercase().parse::<Ubid>().unwrap(), id);
    }
}
