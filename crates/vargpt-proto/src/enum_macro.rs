//! One macro for the proto enums, so each gets the same proto3-JSON behaviour:
//! written as its value name, read from the name or the number.

macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $proto:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $num, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The proto value name, which is also its JSON form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The proto value number.
            pub fn number(self) -> i32 {
                self as i32
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::schema::ProtoEnum for $name {
            const PROTO_NAME: &'static str = $proto;
            fn values() -> Vec<(&'static str, i32)> {
                $name::ALL.iter().map(|v| (v.as_str(), v.number())).collect()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::String(s) => $name::from_name(&s).ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "unknown {} value {s:?}", stringify!($name)
                        ))
                    }),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then($name::from_number)
                        .ok_or_else(|| serde::de::Error::custom(format!(
                            "unknown {} number {n}", stringify!($name)
                        ))),
                    other => Err(serde::de::Error::custom(format!(
                        "{} must be a string, got {other}", stringify!($name)
                    ))),
                }
            }
        }
    };
}
