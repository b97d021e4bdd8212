//! Enums stored as text: a column that holds one of a few words (a VM's
//! state, a host's) is read and written as a Rust enum, so a misspelled state
//! does not compile, while the column stays plain text (its CHECK constraint
//! lists the same words) and an operator reads it as it is.

/// Declare an enum stored as text: `text_enum! { pub enum HostState { New = "new", .. } }`.
/// It encodes and decodes as Postgres text, serializes as the same word,
/// prints as it (`Display`) and parses from it (`FromStr`); a stored word it
/// does not know fails the read, naming it.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name { $($(#[$vmeta])* #[serde(rename = $word)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored word.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(format!("{other:?} is not a {}: one of {}", stringify!($name), [$($word),+].join(", "))),
                }
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::vm::VmState;
    use crate::vm_host::HostState;

    #[test]
    fn every_state_reads_back_as_the_word_it_is_stored_as() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert_eq!(HostState::Accepting.to_string(), "accepting");
    }

    #[test]
    fn an_unknown_stored_word_is_named_with_the_known_ones() {
        let err = "acepting".parse::<HostState>().unwrap_err();
        assert_eq!(err, "\"acepting\" is not a HostState: one of new, preparing, accepting, unreachable, draining, destroyed");
    }
}
