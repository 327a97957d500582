//! Lower-case hex for hashes, ids and signatures, and serde adapters for fixed-size arrays.

pub(crate) fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes exactly `N` bytes of hex (either case).
pub(crate) fn decode<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return Err(format!("expected {} hex digits, got {}", N * 2, s.len()));
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = digit(pair[0])?;
        let lo = digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn digit(c: u8) -> Result<u8, String> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", c as char)),
    }
}

macro_rules! serde_array {
    ($name:ident, $n:literal) => {
        pub(crate) mod $name {
            use serde::{Deserialize, Deserializer, Serializer};

            pub(crate) fn serialize<S: Serializer>(
                bytes: &[u8; $n],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_str(&super::encode(bytes))
            }

            pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<[u8; $n], D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                super::decode::<$n>(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_array!(serde16, 16);
serde_array!(serde32, 32);
serde_array!(serde64, 64);

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_rejects_bad_digits() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&bytes), "0001abff");
        assert_eq!(super::decode::<4>("0001ABff").unwrap(), bytes);
        assert!(super::decode::<4>("0001abfg").is_err());
        assert!(super::decode::<4>("0001ab").is_err());
    }
}
